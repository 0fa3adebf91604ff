"""Zip archives: reading their directory, writing members (inflate and CRC-32 with ISA-L or zlib), unpacking a
downloaded archive or a stream of one, and the checkpoints that let a stream resume with its md5."""
