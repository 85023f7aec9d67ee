# wsgate: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest pytest-pure install node debs bench soak conformance fleet fleet-debs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml setup.py $(wildcard src/wsgate/*/_*.c)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch node_modules/.installed

node: node_modules/.installed

## Debian packages some tests need: nginx to compare against; headless Chromium and NSS's
## certutil (libnss3-tools, to make Chromium trust the test CA) for the browser test; the Perl
## modules nginx's test-suite harness needs for its WebSocket and TLS files (make conformance);
## HAProxy for the RFC 8441 interop test (its `ws h2` servers speak WebSockets over HTTP/2);
## h2load (nghttp2-client) for make bench's HTTP/2 figures; strace for its system-call counts;
## ShellCheck for deploy/entrypoint.sh (tests/unit/test_deploy.py); redis-server for the limit
## zones kept in Redis (tests/integration/test_limits_redis.py). Installed only when
## missing and when we can (root with apt-get); otherwise those tests skip with a reason.
## Debian's postinst starts the nginx service: stop the copy this step started.
debs:
	@if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null \
	      && { /usr/sbin/nginx -s quit 2>/dev/null || true; }; } \
	      || echo "could not install nginx: the nginx comparison tests will be skipped"; \
	  else echo "nginx is not installed: the nginx comparison tests will be skipped"; fi; \
	fi
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing=" chromium"; \
	perl -MProtocol::WebSocket -e1 2>/dev/null || missing="$$missing libprotocol-websocket-perl"; \
	perl -MIO::Socket::SSL -e1 2>/dev/null || missing="$$missing libio-socket-ssl-perl"; \
	perl -MNet::SSLeay -e1 2>/dev/null || missing="$$missing libnet-ssleay-perl"; \
	command -v certutil >/dev/null 2>&1 || missing="$$missing libnss3-tools"; \
	command -v haproxy >/dev/null 2>&1 || missing="$$missing haproxy"; \
	command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	command -v shellcheck >/dev/null 2>&1 || missing="$$missing shellcheck"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	      || echo "could not install$$missing: the browser test and some nginx-tests files will be skipped"; \
	  else echo "not installed:$$missing: the browser test and some nginx-tests files will be skipped"; fi; \
	fi

## make run: the walk-through as applications deploy it -- the echo server on 127.0.0.1:8010
## and wsgate on :8020 with examples/app.conf: the page from examples/html, the WebSocket on /ws/.
run: $(STAMP)
	@echo "Starting wsgate-echo on 127.0.0.1:8010 and wsgate -c examples/app.conf on :8020."
	@echo "Open http://127.0.0.1:8020/ in a browser, or in another terminal:"
	@echo "  $(BIN)/wsgate-cat --connect ws://127.0.0.1:8020/ws/"
	@echo "Press CTRL+C to stop both."
	@$(BIN)/wsgate-echo & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null' EXIT INT TERM; \
	$(BIN)/wsgate -p . -c examples/app.conf -g 'daemon off;'

lint: $(STAMP)
	$(BIN)/ruff check src tests bench fleet
	$(BIN)/ruff format --check src tests bench fleet

typecheck: $(STAMP)
	$(BIN)/mypy

## Two pytest processes (pytest-xdist, work stealing): nginx's suite (tests/conformance, one
## test of about 10 minutes that mostly waits on its harness) runs beside everything else.
pytest: $(STAMP) node debs
	$(BIN)/pytest -q -n 2 --dist worksteal

## The frame scanner's tests and the tunnel's again on the pure-Python scanner and the loop's
## transports (WSGATE_PURE=1), which a machine without a C compiler runs (the rest of the suite
## runs the compiled ones); with them the walk-through, the browser, Autobahn and the reload
## tests (issue 16: nothing regresses without the accelerator).
PURE_TESTS := tests/unit/test_frames.py tests/unit/test_frames_compiled.py \
	tests/unit/test_ws_features.py tests/unit/test_ws_metrics.py tests/unit/test_tunnel_context.py \
	tests/integration/test_close_frames.py tests/integration/test_ws_features.py \
	tests/integration/test_ws_metrics.py tests/integration/test_tunnel_lifecycle.py \
	tests/interop/test_walkthrough.py tests/interop/test_browser.py \
	tests/integration/test_autobahn.py tests/integration/test_zero_downtime.py
pytest-pure: $(STAMP) node debs
	WSGATE_PURE=1 $(BIN)/pytest -q -n 2 -p no:cacheprovider $(PURE_TESTS)

## make test: installs everything the tests need, then linters, type checks and pytest.
test: lint typecheck pytest pytest-pure

## make conformance: files of nginx's own test suite (../shared/nginx-tests, or NGINX_TESTS=) run
## against wsgate through nginx's Perl harness; prints passed/planned per file beside the counts
## in tests/conformance/expected.txt. CONFORMANCE="rewrite.t map.t" runs only those files.
conformance: $(STAMP) debs
	$(PY) tests/conformance/run.py $(CONFORMANCE)

## make soak: the reliability probes (tests/reliability/) in their long form, WSGATE_SOAK=1:
## counts and durations scaled up, every loop still bounded in count and time (about 10-15
## minutes); the figures are printed in the summary, beside nginx's when nginx is installed.
## Also the whole Autobahn selection through one HTTP/2 connection (RFC 8441, about 2 minutes).
soak: $(STAMP) debs
	WSGATE_SOAK=1 $(BIN)/pytest -q -p no:cacheprovider tests/reliability \
	  tests/integration/test_autobahn.py::test_autobahn_same_through_one_http2_connection_all_cases

## make bench: wsgate (compiled and WSGATE_PURE=1), nginx and HAProxy side by side (bench/run.py,
## about 15 minutes with the HTTP/2 part); writes bench/results/. As root it installs nginx,
## HAProxy, h2load (nghttp2-client, for the HTTP/2 figures) and strace (system calls per
## handshake and per message) from Debian's packages when they are
## missing (otherwise it skips them, with a note), and stops the services their postinst started.
## BENCH_ARGS passes flags: make bench BENCH_ARGS="--smoke" or BENCH_ARGS="--parts relay,idle".
$(VENV)/.bench-installed: $(BIN)/python pyproject.toml
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.bench-installed
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing=" nginx-light"; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v h2load >/dev/null 2>&1 || missing="$$missing nghttp2-client"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	      && { /usr/sbin/nginx -s quit 2>/dev/null || true; } \
	      && { [ ! -f /run/haproxy.pid ] || kill "$$(cat /run/haproxy.pid)" 2>/dev/null || true; }; } \
	      || echo "could not install$$missing: the benchmark will skip it"; \
	  else echo "not installed:$$missing: the benchmark will skip it"; fi; \
	fi
	$(PY) -m bench.run $(BENCH_ARGS)

## make fleet (root only; about 2 minutes; not part of make test): the fleet simulation of
## docs/fleet.md. HAProxy (TCP, send-proxy-v2), three wsgate nodes, three backends, dnsmasq,
## Redis and a client host with 2,100 WebSocket clients, each host a network namespace of its
## own on one bridge (198.18.0.0/15, RFC 2544's benchmarking range, nothing in the root
## namespace); steady traffic, a backend added to and one removed from DNS, a node stopped
## gracefully, a node killed, Redis restarted. Prints the figures, writes
## fleet/results/last.json and fails when a check of issue 17 fails; skips (with the reason)
## where namespaces cannot be made. fleet-debs installs what is missing from Debian's packages
## (dnsmasq-base: the program without the system service) and stops the services their
## postinst started. FLEET_ARGS passes flags: make fleet FLEET_ARGS="--users 100 --keep".
fleet-debs:
	@missing=""; \
	command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || missing=" iproute2"; \
	command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$$missing dnsmasq-base"; \
	command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	      && { [ ! -f /run/haproxy.pid ] || kill "$$(cat /run/haproxy.pid)" 2>/dev/null || true; } \
	      && { [ ! -f /run/redis/redis-server.pid ] || kill "$$(cat /run/redis/redis-server.pid)" 2>/dev/null || true; }; } \
	      || echo "could not install$$missing: the fleet simulation will skip"; \
	  else echo "not installed:$$missing: the fleet simulation will skip"; fi; \
	fi

fleet: $(STAMP) fleet-debs
	$(PY) -m fleet.run $(FLEET_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis
