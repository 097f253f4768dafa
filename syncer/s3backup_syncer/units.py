"""Binary size units, shared by the option parsers and the part-size rules (no imports: no loops)."""

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4

READ_CHUNK = MiB  # one read of a file or of a body: the unit the memory bounds count in
