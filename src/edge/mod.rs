//! The Worker shell: decodes requests, calls the core, performs I/O, encodes responses.
