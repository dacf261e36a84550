# lathe: `make test` and `make demo` work on a fresh Debian 12 machine: they install what is
# missing (apt-get), configure (CMake + Ninja), build, then test or run the demo.
BUILD ?= build
JOBS ?= $(shell nproc)
SHARED ?= $(abspath ../shared)
CMAKE_FLAGS ?=
# The CUDA backend is compiled whenever nvcc is present (CI included, so it never rots); its tests
# skip loudly without a GPU. CUDA=OFF skips it, CUDA=ON insists.
NVCC := $(shell command -v nvcc 2>/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; })
CUDA ?= $(if $(NVCC),ON,OFF)
DEBIAN_PACKAGES := build-essential cmake ninja-build pkg-config nlohmann-json3-dev libcli11-dev \
  libpcre2-dev libutf8proc-dev libhwy-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev \
  libomp-dev libeigen3-dev libxxhash-dev libcpp-httplib-dev curl
# Node.js/npm only fetch test fixtures and clients (npm tokenizers, openai); a machine may already
# have them from outside Debian (then Debian's npm package would conflict), so they are installed
# only when the command is missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LATHE := $(BUILD)/bin/lathe
DEMO_MODEL := $(SHARED)/models/ref-llama-14m

.PHONY: all deps configure build test demo bench clean

all: build

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

$(BUILD)/build.ninja:
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DLATHE_SHARED_DIR=$(SHARED) -DLATHE_CUDA=$(CUDA) $(CMAKE_FLAGS)

configure: deps $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	@bash scripts/fetch-tokenizers.sh $(BUILD)/tokenizers || echo "warning: tokenizer files not fetched; their tests will skip"
	@grep -qs '"version": "0.23.2"' $(BUILD)/npm/node_modules/tokenizers/package.json || \
	  npm install --prefix $(BUILD)/npm --no-audit --no-fund tokenizers@0.23.2 || \
	  echo "warning: npm tokenizers@0.23.2 not installed; the tokenizer differential test will skip"
	@grep -qs '"version": "6.49.0"' $(BUILD)/npm/node_modules/openai/package.json || \
	  npm install --prefix $(BUILD)/npm --no-audit --no-fund openai@6.49.0 || \
	  echo "warning: npm openai@6.49.0 not installed; the lathe serve openai-client test will skip"
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	@if [ -d "$(DEMO_MODEL)" ]; then \
	  $(LATHE) info -m $(DEMO_MODEL) && \
	  $(LATHE) generate -m $(DEMO_MODEL) -p "And God said unto Moses," -n 64 --temperature 0 ; \
	else \
	  echo "demo: $(DEMO_MODEL) not found. Point SHARED=/path/to/shared at the folder holding models/ref-llama-14m,"; \
	  echo "or run: $(LATHE) generate -m YOUR_HF_MODEL_DIR -p 'Hello' -n 64"; \
	fi

bench: build
	$(LATHE) bench -m $(DEMO_MODEL)

clean:
	rm -rf $(BUILD)
