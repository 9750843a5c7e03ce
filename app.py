"""The entry point: `app` for uvicorn and Vercel (`app:app`); `python app.py` serves it on HOST:PORT."""
import logging

import uvicorn

from web import create_app

app = create_app()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = app.state.services.settings
    # h11 stops reading a request whose headers pass 1 MB (httptools has no limit); the app answers 431 from 64 KB
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", http="h11",
                h11_max_incomplete_event_size=1024 * 1024)
