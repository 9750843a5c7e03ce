# `make run` serves the app (demo mode unless OPENAI_API_KEY is set); `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
HTMX_VERSION ?= 2.0.11
PICO_VERSION ?= 2.1.1
HTMX_SSE_VERSION ?= 2.2.4
VENDOR = static/vendor
ASSETS = $(VENDOR)/htmx.min.js $(VENDOR)/sse.js $(VENDOR)/pico.min.css

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
	cd $(VENDOR)/.pack && npm pack --silent htmx.org@$(HTMX_VERSION) htmx-ext-sse@$(HTMX_SSE_VERSION) \
		@picocss/pico@$(PICO_VERSION) >/dev/null
	tar -xzf $(VENDOR)/.pack/htmx.org-$(HTMX_VERSION).tgz -C $(VENDOR) --strip-components=2 package/dist/htmx.min.js
	tar -xzf $(VENDOR)/.pack/htmx-ext-sse-$(HTMX_SSE_VERSION).tgz -C $(VENDOR) --strip-components=2 package/dist/sse.js
	tar -xzf $(VENDOR)/.pack/picocss-pico-$(PICO_VERSION).tgz -C $(VENDOR) --strip-components=2 package/css/pico.min.css
	rm -rf $(VENDOR)/.pack
	touch $(ASSETS)

bench: setup
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(VENDOR)

# Vercel (README "Deploying to Vercel"): the pinned Vercel CLI and uv in $(TOOLS) (git-ignored), and a real
# `vercel build` without an account, from a clean staging copy, into $(VERCEL_OUT) (see tests/vercel_build.sh;
# tests/test_vercel.py runs it). It needs a Python 3.12 too: `make vercel-check` says what is missing.
TOOLS ?= .tools
VERCEL_CLI_VERSION ?= 58.10.0
UV_VERSION ?= 0.10.11
VERCEL_OUT ?= .vercel/output
VERCEL_BUILD_FLAGS ?= --prod
VERCEL_ENV_VARS = TOOLS=$(abspath $(TOOLS)) VERCEL_CLI_VERSION=$(VERCEL_CLI_VERSION) UV_VERSION=$(UV_VERSION)

.PHONY: vercel-tools vercel-check vercel-build

vercel-tools: | $(VENV)/.installed
	@[ "$$(node -p "require('$(abspath $(TOOLS))/node_modules/vercel/package.json').version" 2>/dev/null)" = "$(VERCEL_CLI_VERSION)" ] || \
		npm install --prefix $(TOOLS) --save-exact --no-audit --no-fund --loglevel=error vercel@$(VERCEL_CLI_VERSION)
	@[ "$$($(TOOLS)/uv/bin/uv --version 2>/dev/null)" = "uv $(UV_VERSION)" ] || \
		{ rm -rf $(TOOLS)/uv && $(VENV)/bin/pip install --quiet --target $(TOOLS)/uv uv==$(UV_VERSION); }

vercel-check:
	@$(VERCEL_ENV_VARS) bash tests/vercel_build.sh --check

vercel-build: assets vercel-tools
	$(VERCEL_ENV_VARS) bash tests/vercel_build.sh $(VERCEL_OUT) $(VERCEL_BUILD_FLAGS)
