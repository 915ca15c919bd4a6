# The steps every folder `sam build` makes for Lambda shares, written once: shared/Makefile (the
# shared layer) and functions/publish/Makefile (pyiceberg beside the publish handler, and the
# audit's through it) include it.
#
#   $(call pip_install,<requirements file>,<folder>)  exactly the pinned packages (--no-deps), as
#       Linux x86_64 wheels for Python 3.11, whatever the building machine
#   $(call strip_site,<folder>)                       what Lambda never reads: bytecode caches and
#       console scripts
PYTHON ?= python3.11

define pip_install
$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
	--platform manylinux2014_x86_64 --implementation cp --python-version 3.11 \
	--target "$(2)" --requirement "$(1)"
endef

define strip_site
find "$(1)" -name __pycache__ -type d -prune -exec rm -rf {} +
rm -rf "$(1)/bin"
endef
