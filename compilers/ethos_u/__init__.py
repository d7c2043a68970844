"""The `ethos-u` compiler plugin: Arm Ethos-U NPUs through Vela (the `ethos-u` extra)."""

from tapeout.compilers.ethos_u.compiler import EthosUCompiler, EthosURunner, resolve_options

__all__ = ["EthosUCompiler", "EthosURunner", "resolve_options"]
