/* A TCP rendezvous that hands a small blob (the 128-byte NCCL unique id) from rank 0 to the
 * other ranks, for launchers that share no filesystem with which to pass it through a file. */
#ifndef SD_RENDEZVOUS_H
#define SD_RENDEZVOUS_H

/* addr "host:port" (host a name or IPv4/IPv6 literal; [v6]:port accepted).  Rank 0 listens on port
 * (SO_REUSEADDR, all interfaces when host resolves to this machine is not required: bind to the
 * wildcard address), accepts world-1 connections and sends each the n bytes of blob; the other ranks
 * connect (retrying every 100 ms until timeout_s: rank 0 may start later) and receive blob.
 * Returns SD_OK, SD_ERR_INPUT for a malformed addr (message names it and the variable name `what`),
 * SD_ERR_SYS for socket failures / timeout (message names the address and the errno text).
 *
 * `what` is where addr came from (an environment variable such as "SSDISTILL_NCCL_ADDR").
 * timeout_s bounds the whole call: rank 0 waiting for every peer, a peer connecting and
 * reading.  On the wire: "SDRV", the length as 4 bytes big-endian, the bytes; a peer refuses
 * (SD_ERR_SYS) a frame with another magic or a length other than n, or one cut short.
 * A peer's blob may be partly written when the call fails.  world == 1 only checks addr.
 * Bad arguments (rank outside [0, world), n < 0, timeout_s < 1) give SD_ERR_INTERNAL. */
int sd_rendezvous_tcp(const char *what, const char *addr, int rank, int world, unsigned char *blob, int n,
                      int timeout_s);

#endif
