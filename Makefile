# Spout: `make demo` shows events streaming; `make test` runs every test against real servers.
# Both install what they need (Debian packages) and start/stop their own servers.
.PHONY: deps build release install test demo bench clean

PREFIX ?= /usr/local

deps:
	@scripts/install-deps

build: deps
	swift build

release: deps
	swift build -c release

# The binary, the systemd unit (deploy/systemd/spout@.service) and bash/zsh/fish completions.
install: release
	@scripts/install .build/release/spout $(PREFIX)

test: deps
	@scripts/test

demo: deps
	@scripts/demo

# Drain, latency and footprint against pg_recvlogical; writes bench/results.json.
bench: deps
	@scripts/bench.py

clean:
	@scripts/pg-stop
	rm -rf .build .run
