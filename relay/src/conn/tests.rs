//! Unit tests of the connection state machine over frames and a fake clock (no sockets).
