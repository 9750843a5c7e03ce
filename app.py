"""The entry point: `app` for uvicorn and Vercel (`app:app`); `python app.py` serves it on HOST:PORT."""
import logging

import uvicorn

from web import create_app

app = create_app()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = app.state.services.settings
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
