"""ACME NPU support for tapeout: the `acme-npuc` toolchain, its runtime and the plugin."""
