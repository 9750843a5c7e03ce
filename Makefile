# `make run` serves the app (demo mode unless OPENAI_API_KEY is set); `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
HTMX_VERSION ?= 2.0.11
PICO_VERSION ?= 2.1.1
VENDOR = static/vendor
ASSETS = $(VENDOR)/htmx.min.js $(VENDOR)/pico.min.css

.PHONY: run test setup assets bench clean

run: setup
	$(VENV)/bin/python app.py

test: setup
	$(VENV)/bin/python -m pytest

setup: $(VENV)/.installed $(ASSETS)

assets: $(ASSETS)

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

# Front-end files come from the npm registry at set-up time; they are served by the app, never committed.
$(ASSETS) &:
	mkdir -p $(VENDOR)/.pack
	cd $(VENDOR)/.pack && npm pack --silent htmx.org@$(HTMX_VERSION) @picocss/pico@$(PICO_VERSION) >/dev/null
	tar -xzf $(VENDOR)/.pack/htmx.org-$(HTMX_VERSION).tgz -C $(VENDOR) --strip-components=2 package/dist/htmx.min.js
	tar -xzf $(VENDOR)/.pack/picocss-pico-$(PICO_VERSION).tgz -C $(VENDOR) --strip-components=2 package/css/pico.min.css
	rm -rf $(VENDOR)/.pack
	touch $(ASSETS)

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(VENDOR)
