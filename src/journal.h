/*
 * journal.h: the local journal (a spool, not a second truth). libmosquitto
 * acknowledges a QoS 1 message to the broker before the daemon sees it, so
 * every message on a meter topic is appended here, from the message
 * callback, before it enters the in-memory ingest queue; it stays until
 * every item decoded from it has committed in PostgreSQL, and is replayed at
 * the next start if it had not (ingest is idempotent on (meter, seq)).
 *
 * Files: segment files <first seq as 16 hex digits>.jnl in one directory,
 * each a 16-byte header ("PPJSEG01", first seq) followed by records:
 *
 *   u32 magic | u32 length | u64 seq | u32 crc32c | u32 zero | payload
 *
 * little-endian, the CRC-32C over length, seq and payload; the payload is
 * i64 received time (wall clock, microseconds), u16 topic length, the topic,
 * the message. Seqs increase by one. At open every segment is checked; in
 * the newest the first bad record (torn write, zeros, CRC) and what follows
 * are cut off; a bad record in an older segment is corruption: what precedes
 * it is replayed, the rest is counted and the file renamed *.corrupt once
 * replayed, never read again.
 *
 * Trimming works when batches commit out of order: each segment counts the
 * items still pending (journal_hold() adds, journal_release() removes); a
 * segment that is neither the one being written nor waiting for replay, with
 * nothing pending, is deleted. The segment being written is closed and
 * deleted once nothing in it is pending and it is large or old enough, so
 * that a restart replays little.
 *
 * Durability: a record is in the kernel once journal_append() returns (it
 * survives kill -9); journal_sync() makes it survive a power loss
 * (fdatasync, plus the directory after a new segment). The caller syncs at
 * most every journal.sync_ms. A write or sync error is fatal to the caller:
 * never retry a failed fsync (the kernel may have dropped the pages).
 *
 * No event loop here: the caller drives syncing and replay, so the unit
 * tests call everything directly.
 */
#ifndef PREPAIDD_JOURNAL_H
#define PREPAIDD_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct journal;

/* Records larger than this are refused (a length above it is corruption). */
#define JOURNAL_RECORD_MAX (16 * 1024 * 1024 + 4096)

/*
 * Open (creating the directory if needed), lock (one daemon a directory)
 * and check the journal in dir.
 * max_bytes bounds the files' total size; segment_bytes is the size at
 * which a segment is closed and the next begun (0: derived from max_bytes).
 * Returns NULL with a message in err.
 */
struct journal *journal_open(
    const char *dir, uint64_t max_bytes, uint64_t segment_bytes, char *err, size_t errlen);

/* Sync what is unsynced (best effort), close, delete committed segments. */
void journal_close(struct journal *j);

/*
 * Append one message. Returns 0 with its seq in *seq; 1 when the journal is
 * full (nothing written); -1 on a write error (err says which; fatal).
 */
int journal_append(struct journal *j, int64_t received_us, const char *topic, const void *payload,
    size_t len, uint64_t *seq, char *err, size_t errlen);

/* Make every appended record durable. 0, or -1 with err (fatal). */
int journal_sync(struct journal *j, char *err, size_t errlen);

/* Records appended since the last sync. */
bool journal_dirty(const struct journal *j);

/* n items decoded from record seq are now pending. */
void journal_hold(struct journal *j, uint64_t seq, size_t n);

/* One item of record seq committed (any order). Trims what it can. */
void journal_release(struct journal *j, uint64_t seq);

/* Called for every replayed record; topic and payload valid during it. */
typedef void (*journal_replay_fn)(void *arg, uint64_t seq, int64_t received_us, const char *topic,
    const void *payload, size_t len);

/*
 * Replay up to max records found at open, oldest first. Returns how many
 * were replayed; 0 once all have been (journal_replaying() is then false).
 */
size_t journal_replay(struct journal *j, size_t max, journal_replay_fn fn, void *arg);
bool journal_replaying(const struct journal *j);

/* Records found at open (to replay), and bytes of all segment files now. */
uint64_t journal_found(const struct journal *j);
uint64_t journal_bytes(const struct journal *j);
uint64_t journal_max_bytes(const struct journal *j);

/*
 * A small state file beside the segments: "<key>\n". journal_state_is()
 * says whether it holds key; journal_state_set() replaces it durably.
 */
bool journal_state_is(const struct journal *j, const char *name, const char *key);
int journal_state_set(struct journal *j, const char *name, const char *key);

/* CRC-32C (Castagnoli), as used by the records; exposed for the tests. */
uint32_t journal_crc32c(uint32_t crc, const void *buf, size_t len);

#endif
