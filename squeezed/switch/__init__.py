"""The Memory interface on xapi's message-switch: the sans-I/O protocol
(`protocol`), a client behaving as upstream's Protocol_unix.Client (`client`),
the queue server run by the daemon (`server`) and the exactly-once record for
redelivered requests (`exactly_once`)."""
