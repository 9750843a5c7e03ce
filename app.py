"""The entry point: `app` for uvicorn and Vercel (`app:app`); `python app.py` serves it on HOST:PORT."""
import gc

import uvicorn

from telemetry import log_as_json
from web import create_app

log_as_json()
app = create_app()
gc.freeze()  # what start-up made lives as long as the process: the full collections of a busy server skip it

if __name__ == "__main__":
    settings = app.state.services.settings
    # h11 stops reading a request whose headers pass 1 MB (httptools has no limit); the app answers 431 from 64 KB
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False, http="h11",
                h11_max_incomplete_event_size=1024 * 1024)
