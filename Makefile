# fdrestore — build, test, bench, proto, lint, fuzz.
#
# `make test` is what CI runs (as root, CI=true, on a clean checkout next to
# ../shared). It needs only Go and the Go module proxy.

GO        ?= go
PKGS      := ./...
BIN       := bin/fdrestore
# The lean restore helper binary; fdrestore finds it next to itself.
HELPER    := bin/fdrestore-helper
FIXTURES  ?= $(or $(FDRESTORE_FIXTURES),$(abspath ../shared/criu-images))
PROTOC_VERSION := 3.21.12
FUZZTIME  ?= 1m
# Packages whose code runs on several goroutines or threads: race-tested.
RACE_PKGS := ./files/... ./scm/...

export FDRESTORE_FIXTURES := $(FIXTURES)

.PHONY: all build helper demo minirt test race vet bench bench-go proto proto-check lint fuzz clean zdtm netlock-tools

all: build

# Both binaries, side by side: fdrestore starts its restore helpers from
# fdrestore-helper in its own directory.
build:
	CGO_ENABLED=0 $(GO) build -o bin/ ./cmd/fdrestore ./cmd/fdrestore-helper

# The package tests and the benchmark run restore.Run inside their own
# test binaries, which have no fdrestore-helper beside them: they get it
# through FDRESTORE_HELPER (without it, helpers re-execute the test binary).
helper:
	CGO_ENABLED=0 $(GO) build -o $(HELPER) ./cmd/fdrestore-helper

WITH_HELPER := FDRESTORE_HELPER=$(abspath $(HELPER))

# Build the tool and run it on a real CRIU 4.2 dump: show it, plan its
# restore and (as root) restore it, print the restored task's fds, and
# remove it again.
demo: build
	./$(BIN) show -D $(FIXTURES)/pipe-tree
	./$(BIN) show $(FIXTURES)/pipe-basic/pipes-data.img
	./$(BIN) plan -D $(FIXTURES)/pipe-basic
	@if [ "$$(id -u)" = 0 ]; then \
	  pidfile=$$(mktemp); \
	  ./$(BIN) restore -D $(FIXTURES)/pipe-basic --leave-stopped -d --pidfile $$pidfile && \
	  pid=$$(cat $$pidfile) && echo "restored pipe-basic as pid $$pid (stopped):" && \
	  ls -l /proc/$$pid/fd | tail -n +2 && grep -H flags /proc/$$pid/fdinfo/* ; \
	  [ -n "$$pid" ] && kill -9 $$pid; rm -f $$pidfile; \
	else echo "(run as root to restore it too)"; fi

# The miniature container runtime of examples/minirt, end to end (root):
# start a tree on its own stdio pipes, dump it, restore it onto new pipes
# from descriptors.json, talk to it. `make test` runs it as a test too.
minirt: helper
	$(WITH_HELPER) $(GO) run ./examples/minirt

vet:
	$(GO) vet $(PKGS)

race: helper
	$(WITH_HELPER) $(GO) test -race -count=1 $(RACE_PKGS)

test: vet helper netlock-tools
	$(WITH_HELPER) $(GO) test -count=1 -timeout 15m $(PKGS)
	$(WITH_HELPER) $(GO) test -race -count=1 -timeout 10m $(RACE_PKGS)
	@$(MAKE) --no-print-directory zdtm

# The zdtm-style suite (test/) with its report: every scenario in the h
# and ns flavors. T picks scenarios: `make zdtm T=pipe` runs
# TestZdtm/.*pipe.*. Needs root. It builds fdrestore and fdrestore-helper
# side by side, as installed, so FDRESTORE_HELPER stays unset.
zdtm: netlock-tools
	cd test && env -u FDRESTORE_HELPER $(GO) test -count=1 -timeout 15m -run 'TestZdtm/.*$(T).*'

# The network lock (internal/netlock) runs nft or iptables; their tests
# and the TCP scenarios need them: as root, Debian's nftables and iptables
# are installed when missing.
netlock-tools:
	@if [ "$$(id -u)" = 0 ]; then \
	  pkgs=; \
	  for tp in nft:nftables iptables-restore:iptables ip6tables-restore:iptables ip:iproute2 tmux:tmux; do \
	    t=$${tp%%:*}; \
	    command -v $$t >/dev/null 2>&1 || [ -x /usr/sbin/$$t ] || [ -x /sbin/$$t ] || pkgs="$$pkgs $${tp#*:}"; \
	  done; \
	  if [ -n "$$pkgs" ]; then \
	    echo "installing Debian packages the tests use:$$pkgs (network lock, veth scenarios, the --shell-job tmux test)"; \
	    apt-get update -qq && apt-get install -y -qq $$pkgs; \
	  fi; \
	fi

# Issue 3's restore benchmark: synthetic trees (internal/synth) restored
# and built from scratch, with a PASS/FAIL table. BENCHFLAGS e.g.
# "-runs 5 -scenarios a,b -debug -cpuprofile /tmp/cpu".
BENCHFLAGS ?=

bench: helper
	$(WITH_HELPER) $(GO) run ./internal/bench $(BENCHFLAGS)

# The packages' Go benchmarks.
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

# Regenerate proto/criupb from proto/*.proto with pinned tools: protoc from
# Debian's protobuf-compiler $(PROTOC_VERSION), protoc-gen-go from go.mod's
# tool directive.
proto: bin/protoc-gen-go
	@protoc --version 2>/dev/null | grep -q ' $(PROTOC_VERSION)$$' || { \
	  echo "protoc $(PROTOC_VERSION) needed; installing Debian's protobuf-compiler"; \
	  apt-get update -qq && apt-get install -y -qq protobuf-compiler; }
	protoc -I . --plugin=protoc-gen-go=bin/protoc-gen-go \
	  --go_out=. --go_opt=module=github.com/fdrestore/fdrestore proto/*.proto

bin/protoc-gen-go: go.mod
	$(GO) build -o $@ google.golang.org/protobuf/cmd/protoc-gen-go

# Fails when proto/criupb is not what `make proto` generates.
proto-check: proto
	git diff --exit-code -- proto/criupb

lint: vet proto-check
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Each fuzz target runs for FUZZTIME; the corpora live in
# PKG/testdata/fuzz. (The fuzzer reports worker progress in batches, so
# "0/sec" between bursts is normal.)
FUZZ_TARGETS := images:FuzzDecode images:FuzzLoad images:FuzzGhost scm:FuzzDecode files:FuzzDecodeTaskPlan
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
	  echo "== $$t"; \
	  $(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) ./$${t%%:*}/; \
	done

clean:
	rm -rf bin
