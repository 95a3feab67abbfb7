/*
 * journal.c: the local journal of journal.h. One file descriptor open for
 * appending (the segment being written), the older segments known by name,
 * size and pending count. Segments found at open are mapped read-only for
 * checking and replay, one at a time.
 *
 * Errors: journal_open() fails with a message; a write or sync error at run
 * time is returned to the caller, which stops (never retries a sync).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common.h"
#include "journal.h"
#include "log.h"
#include "metrics.h"

#define JNL_MAGIC 0x4a504450u /* "PDPJ" little-endian */
#define JNL_HDR 24 /* record header */
#define JNL_SEG_HDR 16 /* segment header */
static const char jnl_seg_magic[8] = {'P', 'P', 'J', 'S', 'E', 'G', '0', '1'};
/* The segment being written is closed early once fully committed and this old. */
#define JNL_IDLE_ROLL_US (10 * 1000000LL)

struct jnl_seg {
	uint64_t first; /* seq of its first record (its name) */
	uint64_t last; /* seq of its last valid record; first - 1 if none */
	uint64_t bytes; /* file size */
	uint64_t valid_end; /* offset after the last valid record */
	uint64_t pending; /* items not yet committed */
	bool corrupt; /* rename to *.corrupt instead of deleting */
	bool replayed; /* everything in it has been replayed (or was written now) */
};

struct journal {
	char *dir;
	int dirfd;
	uint64_t max_bytes, seg_bytes;
	uint64_t total; /* bytes of all segment files */
	uint64_t next_seq;
	uint64_t found; /* records found at open */

	struct jnl_seg *segs; /* oldest first; the active one, if any, last */
	size_t nsegs, capsegs;
	int fd; /* active segment, -1 if none */
	bool dir_dirty; /* a segment was created since the directory was synced */
	bool dirty; /* appended since the last sync */
	bool failed; /* a write or sync failed: no more syncs */
	int64_t active_since_us;

	/* replay position: segment index, offset within it */
	size_t rseg;
	uint64_t roff;
	const unsigned char *rmap;
	size_t rmaplen;

	unsigned char *buf; /* record being built */
	size_t bufcap;
};

/* ---------------------------------------------------------- CRC-32C */

static uint32_t jnl_crc_table[8][256];
static bool jnl_crc_ready;

static void
jnl_crc_init(void)
{
	uint32_t c;
	int i, k;

	for (i = 0; i < 256; i++) {
		c = (uint32_t)i;
		for (k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
		jnl_crc_table[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (k = 1; k < 8; k++)
			jnl_crc_table[k][i] = (jnl_crc_table[k - 1][i] >> 8) ^
			                      jnl_crc_table[0][jnl_crc_table[k - 1][i] & 0xff];
	jnl_crc_ready = true;
}

uint32_t
journal_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const unsigned char *p = buf;

	if (!jnl_crc_ready)
		jnl_crc_init();
	crc = ~crc;
	while (len >= 8) {
		uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
		                        (uint32_t)p[3] << 24);
		crc = jnl_crc_table[7][lo & 0xff] ^ jnl_crc_table[6][(lo >> 8) & 0xff] ^
		      jnl_crc_table[5][(lo >> 16) & 0xff] ^ jnl_crc_table[4][lo >> 24] ^
		      jnl_crc_table[3][p[4]] ^ jnl_crc_table[2][p[5]] ^ jnl_crc_table[1][p[6]] ^
		      jnl_crc_table[0][p[7]];
		p += 8;
		len -= 8;
	}
	while (len-- > 0)
		crc = (crc >> 8) ^ jnl_crc_table[0][(crc ^ *p++) & 0xff];
	return ~crc;
}

/* ---------------------------------------------------------- encoding */

static void
jnl_put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static void
jnl_put64(unsigned char *p, uint64_t v)
{
	jnl_put32(p, (uint32_t)v);
	jnl_put32(p + 4, (uint32_t)(v >> 32));
}

static uint32_t
jnl_get32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
jnl_get64(const unsigned char *p)
{
	return (uint64_t)jnl_get32(p) | (uint64_t)jnl_get32(p + 4) << 32;
}

/* The CRC of a record: over length, seq and payload. */
static uint32_t
jnl_record_crc(const unsigned char *hdr, const unsigned char *payload, size_t len)
{
	uint32_t crc = journal_crc32c(0, hdr + 4, 12);

	return journal_crc32c(crc, payload, len);
}

/*
 * Check the record at p (avail bytes left in the file) whose seq should be
 * want. Returns its total size, or 0 if it is not a valid record.
 */
static size_t
jnl_check(const unsigned char *p, size_t avail, uint64_t want)
{
	uint32_t len;

	if (avail < JNL_HDR || jnl_get32(p) != JNL_MAGIC)
		return 0;
	len = jnl_get32(p + 4);
	if (len < 10 || len > JOURNAL_RECORD_MAX || (size_t)len > avail - JNL_HDR)
		return 0;
	if (jnl_get64(p + 8) != want || jnl_get32(p + 20) != 0)
		return 0;
	if (jnl_record_crc(p, p + JNL_HDR, len) != jnl_get32(p + 16))
		return 0;
	/* topic length within the payload */
	if ((size_t)(p[JNL_HDR + 8] | p[JNL_HDR + 9] << 8) > len - 10)
		return 0;
	return JNL_HDR + len;
}

/* ---------------------------------------------------------- files */

static void
jnl_seg_name(const struct jnl_seg *s, char *out, size_t outlen, const char *ext)
{
	snprintf(out, outlen, "%016" PRIx64 ".%s", s->first, ext);
}

static struct jnl_seg *
jnl_push(struct journal *j)
{
	if (j->nsegs == j->capsegs) {
		j->capsegs = j->capsegs ? j->capsegs * 2 : 16;
		j->segs = xreallocarray(j->segs, j->capsegs, sizeof *j->segs);
	}
	memset(&j->segs[j->nsegs], 0, sizeof j->segs[0]);
	return &j->segs[j->nsegs++];
}

static int
jnl_cmp(const void *a, const void *b)
{
	const struct jnl_seg *x = a, *y = b;

	return x->first < y->first ? -1 : x->first > y->first;
}

static int
jnl_fsync_dir(struct journal *j, char *err, size_t errlen)
{
	if (fsync(j->dirfd) != 0) {
		snprintf(
		    err, errlen, "journal: cannot sync directory %s: %s", j->dir, strerror(errno));
		j->failed = true;
		return -1;
	}
	j->dir_dirty = false;
	return 0;
}

/* Remove segment i (nothing in it is needed any more). */
static void
jnl_drop(struct journal *j, size_t i)
{
	struct jnl_seg *s = &j->segs[i];
	char name[64], aside[64];

	jnl_seg_name(s, name, sizeof name, "jnl");
	if (s->corrupt) {
		jnl_seg_name(s, aside, sizeof aside, "corrupt");
		if (renameat(j->dirfd, name, j->dirfd, aside) != 0)
			log_error("journal: cannot rename %s/%s aside: %s", j->dir, name,
			    strerror(errno));
		else
			log_error("journal: %s/%s kept as %s for inspection", j->dir, name, aside);
	} else if (unlinkat(j->dirfd, name, 0) != 0 && errno != ENOENT)
		log_error("journal: cannot delete %s/%s: %s", j->dir, name, strerror(errno));
	j->total -= s->bytes;
	memmove(&j->segs[i], &j->segs[i + 1], (j->nsegs - i - 1) * sizeof *j->segs);
	j->nsegs--;
	if (j->rseg > i)
		j->rseg--;
	metrics.journal_bytes = (int64_t)j->total;
	metrics.journal_segments = (int64_t)j->nsegs;
	metrics.journal_trimmed++;
}

/* Delete every closed, replayed segment with nothing pending. */
static void
jnl_trim(struct journal *j)
{
	size_t i, closed = j->fd >= 0 ? j->nsegs - 1 : j->nsegs;

	for (i = 0; i < closed;) {
		if (j->segs[i].pending == 0 && j->segs[i].replayed) {
			jnl_drop(j, i);
			closed--;
		} else
			i++;
	}
}

/* Close the segment being written (synced first if it has unsynced data). */
static int
jnl_close_active(struct journal *j, char *err, size_t errlen)
{
	int rc = 0;

	if (j->fd < 0)
		return 0;
	if (j->dirty && !j->failed && fdatasync(j->fd) != 0) {
		snprintf(err, errlen, "journal: cannot sync %s: %s", j->dir, strerror(errno));
		j->failed = true;
		rc = -1;
	} else if (j->dirty) {
		metrics.journal_syncs++;
		j->dirty = false;
	}
	close(j->fd);
	j->fd = -1;
	return rc;
}

static int
jnl_open_active(struct journal *j, char *err, size_t errlen)
{
	unsigned char hdr[JNL_SEG_HDR];
	struct jnl_seg *s;
	char name[64];
	int fd;

	s = jnl_push(j);
	s->first = j->next_seq;
	s->last = s->first - 1;
	s->replayed = true;
	jnl_seg_name(s, name, sizeof name, "jnl");
	fd = openat(j->dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	if (fd < 0) {
		snprintf(
		    err, errlen, "journal: cannot create %s/%s: %s", j->dir, name, strerror(errno));
		j->nsegs--;
		return -1;
	}
	memcpy(hdr, jnl_seg_magic, 8);
	jnl_put64(hdr + 8, s->first);
	if (write(fd, hdr, sizeof hdr) != (ssize_t)sizeof hdr) {
		snprintf(
		    err, errlen, "journal: cannot write %s/%s: %s", j->dir, name, strerror(errno));
		close(fd);
		unlinkat(j->dirfd, name, 0);
		j->nsegs--;
		return -1;
	}
	s->bytes = s->valid_end = JNL_SEG_HDR;
	j->total += JNL_SEG_HDR;
	j->fd = fd;
	j->dir_dirty = true;
	j->dirty = true;
	j->active_since_us = now_mono_us();
	metrics.journal_segments = (int64_t)j->nsegs;
	return 0;
}

/*
 * Check one segment file found at open: set last and valid_end, count its
 * records. last_file: the newest, whose torn tail is cut off.
 */
static int
jnl_scan(struct journal *j, struct jnl_seg *s, bool last_file, char *err, size_t errlen)
{
	char name[64];
	struct stat st;
	const unsigned char *m = NULL;
	uint64_t off, want;
	size_t n;
	int fd;

	jnl_seg_name(s, name, sizeof name, "jnl");
	fd = openat(j->dirfd, name, (last_file ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0) {
		snprintf(
		    err, errlen, "journal: cannot open %s/%s: %s", j->dir, name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	s->bytes = (uint64_t)st.st_size;
	s->last = s->first - 1;
	s->valid_end = s->bytes < JNL_SEG_HDR ? s->bytes : JNL_SEG_HDR;
	if (st.st_size > 0) {
		m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (m == MAP_FAILED) {
			snprintf(err, errlen, "journal: cannot map %s/%s: %s", j->dir, name,
			    strerror(errno));
			close(fd);
			return -1;
		}
	}
	if (s->bytes < JNL_SEG_HDR || memcmp(m, jnl_seg_magic, 8) != 0 ||
	    jnl_get64(m + 8) != s->first) {
		s->valid_end = 0;
		off = s->bytes;
	} else {
		off = JNL_SEG_HDR;
		want = s->first;
		while (off < s->bytes &&
		       (n = jnl_check(m + off, (size_t)(s->bytes - off), want)) > 0) {
			off += n;
			s->last = want++;
			j->found++;
		}
		s->valid_end = off;
	}
	if (m != NULL)
		munmap((void *)(uintptr_t)m, (size_t)st.st_size);
	if (last_file && s->bytes < JNL_SEG_HDR) {
		/* Created, header not yet whole: nothing was ever in it. */
		s->bytes = 0;
		s->valid_end = 0;
	} else if (s->valid_end < s->bytes) {
		metrics.journal_torn++;
		if (last_file && s->valid_end >= JNL_SEG_HDR) {
			log_warn("journal: %s/%s: cutting %" PRIu64 " bytes after the last whole "
			         "record (a write the crash interrupted)",
			    j->dir, name, s->bytes - s->valid_end);
			if (ftruncate(fd, (off_t)s->valid_end) != 0 || fsync(fd) != 0) {
				snprintf(err, errlen, "journal: cannot truncate %s/%s: %s", j->dir,
				    name, strerror(errno));
				close(fd);
				return -1;
			}
			s->bytes = s->valid_end;
		} else {
			metrics.journal_corrupt++;
			s->corrupt = true;
			log_error("journal: %s/%s is damaged at byte %" PRIu64 " of %" PRIu64
			          ": the %" PRIu64 " records before it are replayed, the rest "
			          "cannot be read",
			    j->dir, name, s->valid_end, s->bytes, s->last + 1 - s->first);
		}
	}
	close(fd);
	return 0;
}

struct journal *
journal_open(const char *dir, uint64_t max_bytes, uint64_t segment_bytes, char *err, size_t errlen)
{
	struct journal *j = xcalloc(1, sizeof *j);
	struct dirent *de;
	DIR *d;
	size_t i;
	int dfd;

	j->dir = xstrdup(dir);
	j->fd = -1;
	j->dirfd = -1;
	j->max_bytes = max_bytes;
	if (segment_bytes == 0) {
		segment_bytes = max_bytes / 8;
		if (segment_bytes > 64ull << 20)
			segment_bytes = 64ull << 20;
		if (segment_bytes < 64ull << 10)
			segment_bytes = 64ull << 10;
	}
	j->seg_bytes = segment_bytes;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		snprintf(
		    err, errlen, "journal: cannot create directory %s: %s", dir, strerror(errno));
		goto fail;
	}
	j->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j->dirfd < 0) {
		snprintf(
		    err, errlen, "journal: cannot open directory %s: %s", dir, strerror(errno));
		goto fail;
	}
	/* One daemon a journal: a second one would replay and trim the first's records. */
	if (flock(j->dirfd, LOCK_EX | LOCK_NB) != 0) {
		snprintf(err, errlen, "journal: directory %s is in use by another prepaidd (%s)",
		    dir, strerror(errno));
		goto fail;
	}
	dfd = dup(j->dirfd);
	if (dfd < 0 || (d = fdopendir(dfd)) == NULL) {
		snprintf(
		    err, errlen, "journal: cannot read directory %s: %s", dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
		goto fail;
	}
	while ((de = readdir(d)) != NULL) {
		char *end;
		uint64_t first;

		if (strlen(de->d_name) != 20 || strcmp(de->d_name + 16, ".jnl") != 0)
			continue;
		first = strtoull(de->d_name, &end, 16);
		if (end != de->d_name + 16 || first == 0)
			continue;
		jnl_push(j)->first = first;
	}
	closedir(d);
	if (j->nsegs > 1)
		qsort(j->segs, j->nsegs, sizeof *j->segs, jnl_cmp);
	for (i = 0; i < j->nsegs; i++) {
		if (jnl_scan(j, &j->segs[i], i + 1 == j->nsegs, err, errlen) != 0)
			goto fail;
		j->total += j->segs[i].bytes;
	}
	/* Segments with no record: nothing to replay. */
	for (i = 0; i < j->nsegs;) {
		if (j->segs[i].last + 1 == j->segs[i].first) {
			j->segs[i].replayed = true;
			jnl_drop(j, i);
		} else
			i++;
	}
	j->next_seq = j->nsegs > 0 ? j->segs[j->nsegs - 1].last + 1 : 1;
	metrics.journal_bytes = (int64_t)j->total;
	metrics.journal_segments = (int64_t)j->nsegs;
	if (j->found > 0)
		log_info("journal: %" PRIu64 " record(s) in %zu segment(s) of %s to replay",
		    j->found, j->nsegs, dir);
	return j;

fail:
	journal_close(j);
	return NULL;
}

void
journal_close(struct journal *j)
{
	char err[256];

	if (j == NULL)
		return;
	if (j->rmap != NULL)
		munmap((void *)(uintptr_t)j->rmap, j->rmaplen);
	if (jnl_close_active(j, err, sizeof err) != 0)
		log_error("%s", err);
	jnl_trim(j);
	if (j->dirfd >= 0)
		close(j->dirfd);
	free(j->segs);
	free(j->buf);
	free(j->dir);
	free(j);
}

/* ---------------------------------------------------------- writing */

int
journal_append(struct journal *j, int64_t received_us, const char *topic, const void *payload,
    size_t len, uint64_t *seq, char *err, size_t errlen)
{
	size_t tlen = strlen(topic), plen, total;
	struct jnl_seg *s;
	unsigned char *p;
	ssize_t w;

	if (j->failed) {
		snprintf(err, errlen, "journal: an earlier write or sync failed");
		return -1;
	}
	if (tlen > 65535)
		tlen = 65535;
	plen = 10 + tlen + len;
	if (plen > JOURNAL_RECORD_MAX) {
		snprintf(err, errlen, "journal: message of %zu bytes too large", len);
		return 1;
	}
	total = JNL_HDR + plen;
	if (j->total + total + (j->fd < 0 ? JNL_SEG_HDR : 0) > j->max_bytes)
		return 1;
	if (j->fd >= 0 && j->segs[j->nsegs - 1].bytes + total > j->seg_bytes &&
	    j->segs[j->nsegs - 1].bytes > JNL_SEG_HDR) {
		if (jnl_close_active(j, err, errlen) != 0)
			return -1;
		jnl_trim(j);
	}
	if (j->fd < 0 && jnl_open_active(j, err, errlen) != 0) {
		j->failed = true;
		return -1;
	}
	if (total > j->bufcap) {
		j->bufcap = total < 4096 ? 4096 : total;
		free(j->buf);
		j->buf = xmalloc(j->bufcap);
	}
	p = j->buf;
	jnl_put32(p, JNL_MAGIC);
	jnl_put32(p + 4, (uint32_t)plen);
	jnl_put64(p + 8, j->next_seq);
	jnl_put32(p + 20, 0);
	jnl_put64(p + JNL_HDR, (uint64_t)received_us);
	p[JNL_HDR + 8] = (unsigned char)tlen;
	p[JNL_HDR + 9] = (unsigned char)(tlen >> 8);
	memcpy(p + JNL_HDR + 10, topic, tlen);
	if (len > 0)
		memcpy(p + JNL_HDR + 10 + tlen, payload, len);
	jnl_put32(p + 16, jnl_record_crc(p, p + JNL_HDR, plen));
	w = write(j->fd, p, total);
	s = &j->segs[j->nsegs - 1];
	if (w != (ssize_t)total) {
		snprintf(err, errlen, "journal: cannot write to %s: %s", j->dir,
		    w < 0 ? strerror(errno) : "short write");
		/* A partial record is cut at the next open; write nothing after it. */
		j->failed = true;
		return -1;
	}
	s->bytes += total;
	s->valid_end = s->bytes;
	s->last = j->next_seq;
	j->total += total;
	j->dirty = true;
	*seq = j->next_seq++;
	metrics.journal_records++;
	metrics.journal_bytes = (int64_t)j->total;
	return 0;
}

int
journal_sync(struct journal *j, char *err, size_t errlen)
{
	if (j->failed) {
		snprintf(err, errlen, "journal: an earlier write or sync failed");
		return -1;
	}
	if (j->dirty && j->fd >= 0) {
		if (fdatasync(j->fd) != 0) {
			snprintf(
			    err, errlen, "journal: cannot sync %s: %s", j->dir, strerror(errno));
			j->failed = true;
			return -1;
		}
		metrics.journal_syncs++;
	}
	j->dirty = false;
	if (j->dir_dirty)
		return jnl_fsync_dir(j, err, errlen);
	return 0;
}

bool
journal_dirty(const struct journal *j)
{
	return j->dirty || j->dir_dirty;
}

/* The segment holding seq, or NULL. */
static struct jnl_seg *
jnl_find(struct journal *j, uint64_t seq)
{
	size_t lo = 0, hi = j->nsegs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (j->segs[mid].last < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo < j->nsegs && j->segs[lo].first <= seq && seq <= j->segs[lo].last)
		return &j->segs[lo];
	return NULL;
}

void
journal_hold(struct journal *j, uint64_t seq, size_t n)
{
	struct jnl_seg *s = jnl_find(j, seq);

	if (s != NULL)
		s->pending += n;
}

void
journal_release(struct journal *j, uint64_t seq)
{
	struct jnl_seg *s = jnl_find(j, seq);
	struct jnl_seg *a;
	char err[256];

	if (s == NULL || s->pending == 0) {
		log_error("journal: release of record %" PRIu64 " that holds nothing", seq);
		return;
	}
	s->pending--;
	if (s->pending > 0)
		return;
	a = j->fd >= 0 ? &j->segs[j->nsegs - 1] : NULL;
	if (s != a) {
		jnl_trim(j);
		return;
	}
	/*
	 * Everything written so far is committed: close the segment being
	 * written when it is large or old enough, so that a restart replays
	 * little; the next append begins a new one.
	 */
	if (a->bytes >= j->seg_bytes / 4 ||
	    now_mono_us() - j->active_since_us >= JNL_IDLE_ROLL_US) {
		if (jnl_close_active(j, err, sizeof err) != 0)
			log_error("%s", err);
		jnl_trim(j);
	}
}

/* ---------------------------------------------------------- replay */

bool
journal_replaying(const struct journal *j)
{
	size_t closed = j->fd >= 0 ? j->nsegs - 1 : j->nsegs;

	return j->rseg < closed && !j->segs[j->rseg].replayed;
}

uint64_t
journal_found(const struct journal *j)
{
	return j->found;
}

uint64_t
journal_bytes(const struct journal *j)
{
	return j->total;
}

uint64_t
journal_max_bytes(const struct journal *j)
{
	return j->max_bytes;
}

/* Map segment rseg for replay; false (and it is skipped) if it cannot be. */
static bool
jnl_map(struct journal *j)
{
	struct jnl_seg *s = &j->segs[j->rseg];
	char name[64];
	void *m;
	int fd;

	jnl_seg_name(s, name, sizeof name, "jnl");
	fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		log_error(
		    "journal: cannot open %s/%s for replay: %s", j->dir, name, strerror(errno));
		return false;
	}
	m = mmap(NULL, (size_t)s->valid_end, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED) {
		log_error(
		    "journal: cannot map %s/%s for replay: %s", j->dir, name, strerror(errno));
		return false;
	}
	j->rmap = m;
	j->rmaplen = (size_t)s->valid_end;
	j->roff = JNL_SEG_HDR;
	return true;
}

size_t
journal_replay(struct journal *j, size_t max, journal_replay_fn fn, void *arg)
{
	size_t done = 0;

	while (done < max && journal_replaying(j)) {
		struct jnl_seg *s = &j->segs[j->rseg];

		if (j->rmap == NULL && !jnl_map(j)) {
			s->replayed = true;
			s->corrupt = true;
			j->rseg++;
			continue;
		}
		if (j->roff >= j->rmaplen) {
			munmap((void *)(uintptr_t)j->rmap, j->rmaplen);
			j->rmap = NULL;
			s->replayed = true;
			j->rseg++;
			if (s->pending == 0)
				jnl_trim(j);
			continue;
		}
		{
			const unsigned char *p = j->rmap + j->roff;
			uint32_t len = jnl_get32(p + 4);
			uint64_t seq = jnl_get64(p + 8);
			int64_t rcv = (int64_t)jnl_get64(p + JNL_HDR);
			size_t tlen = (size_t)(p[JNL_HDR + 8] | p[JNL_HDR + 9] << 8);
			char topic[65536];

			memcpy(topic, p + JNL_HDR + 10, tlen);
			topic[tlen] = '\0';
			j->roff += JNL_HDR + len;
			fn(arg, seq, rcv, topic, p + JNL_HDR + 10 + tlen, len - 10 - tlen);
			metrics.journal_replayed++;
			done++;
		}
	}
	return done;
}

/* ---------------------------------------------------------- state file */

bool
journal_state_is(const struct journal *j, const char *name, const char *key)
{
	char buf[512];
	ssize_t n;
	int fd;

	fd = openat(j->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	return strcmp(buf, key) == 0;
}

int
journal_state_set(struct journal *j, const char *name, const char *key)
{
	char tmp[128];
	size_t len = strlen(key);
	int fd, rc = -1;

	snprintf(tmp, sizeof tmp, "%s.tmp", name);
	fd = openat(j->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -1;
	if (write(fd, key, len) == (ssize_t)len && write(fd, "\n", 1) == 1 && fsync(fd) == 0)
		rc = 0;
	close(fd);
	if (rc == 0 && renameat(j->dirfd, tmp, j->dirfd, name) != 0)
		rc = -1;
	if (rc == 0 && fsync(j->dirfd) != 0)
		rc = -1;
	return rc;
}
