"""Front ends, the compiler plugin interface and registry, and the built-in compilers."""
