/*
 * check_journal.c: the local journal (src/journal.c) on real files in a
 * temporary directory: what was appended is replayed in order after a
 * restart; a torn tail (cut at every byte of the last record, or followed by
 * zeros) loses only that record; a CRC error in the newest segment cuts from
 * there, in an older one keeps what precedes it and sets the file aside;
 * segments are deleted only once every item in them committed, in any order;
 * a full journal refuses the append.
 */
#include <check.h>
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "journal.h"
#include "metrics.h"

static char dir[256];

static void
setup(void)
{
	snprintf(dir, sizeof dir, "/tmp/check_journal.XXXXXX");
	ck_assert_ptr_nonnull(mkdtemp(dir));
}

static void
teardown(void)
{
	char cmd[300];

	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	ck_assert_int_eq(system(cmd), 0);
}

/* Files in dir ending in ext. */
static int
count_files(const char *ext)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL) {
		size_t l = strlen(de->d_name);

		if (l > strlen(ext) && strcmp(de->d_name + l - strlen(ext), ext) == 0)
			n++;
	}
	closedir(d);
	return n;
}

/* The path of the only (or newest) .jnl file. */
static void
newest_segment(char *out, size_t outlen)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char best[256] = "";

	ck_assert_ptr_nonnull(d);
	while ((de = readdir(d)) != NULL)
		if (strstr(de->d_name, ".jnl") != NULL && strcmp(de->d_name, best) > 0)
			snprintf(best, sizeof best, "%s", de->d_name);
	closedir(d);
	ck_assert_str_ne(best, "");
	snprintf(out, outlen, "%s/%s", dir, best);
}

static struct journal *
open_j(uint64_t max, uint64_t seg)
{
	char err[256];
	struct journal *j = journal_open(dir, max, seg, err, sizeof err);

	ck_assert_msg(j != NULL, "%s", err);
	return j;
}

static uint64_t
append(struct journal *j, int i)
{
	char topic[64], payload[64], err[256];
	uint64_t seq = 0;
	int rc;

	snprintf(topic, sizeof topic, "meters/m%d/reading", i);
	snprintf(payload, sizeof payload, "{\"seq\":%d}", i);
	rc = journal_append(j, 1000 + i, topic, payload, strlen(payload), &seq, err, sizeof err);
	ck_assert_msg(rc == 0, "append %d: rc %d %s", i, rc, err);
	journal_hold(j, seq, 1); /* one item decoded from it, not committed */
	return seq;
}

/* What replay saw. */
struct seen {
	int n;
	uint64_t seq[1000];
	int idx[1000];
	bool bad;
	struct journal *hold; /* hold one item per record, as ingest does */
};

static void
on_replay(void *arg, uint64_t seq, int64_t rcv, const char *topic, const void *p, size_t len)
{
	struct seen *s = arg;
	char want_t[64], want_p[64];
	int i = (int)(rcv - 1000);

	snprintf(want_t, sizeof want_t, "meters/m%d/reading", i);
	snprintf(want_p, sizeof want_p, "{\"seq\":%d}", i);
	if (strcmp(topic, want_t) != 0 || len != strlen(want_p) || memcmp(p, want_p, len) != 0)
		s->bad = true;
	if (s->hold != NULL)
		journal_hold(s->hold, seq, 1);
	s->seq[s->n] = seq;
	s->idx[s->n] = i;
	s->n++;
}

static void
replay_all(struct journal *j, struct seen *s)
{
	memset(s, 0, sizeof *s);
	s->hold = j;
	while (journal_replay(j, 7, on_replay, s) > 0)
		;
	ck_assert(!journal_replaying(j));
	ck_assert(!s->bad);
}

START_TEST(replayed_in_order_after_restart)
{
	struct journal *j = open_j(1 << 20, 0);
	struct seen s;
	char err[256];
	int i;

	for (i = 0; i < 50; i++) {
		ck_assert_uint_eq(append(j, i), (uint64_t)i + 1);
	}
	ck_assert(journal_dirty(j));
	ck_assert_int_eq(journal_sync(j, err, sizeof err), 0);
	ck_assert(!journal_dirty(j));
	/* kill -9: nothing released; just close the descriptors */
	journal_close(j);

	j = open_j(1 << 20, 0);
	ck_assert_uint_eq(journal_found(j), 50);
	replay_all(j, &s);
	ck_assert_int_eq(s.n, 50);
	for (i = 0; i < 50; i++) {
		ck_assert_uint_eq(s.seq[i], (uint64_t)i + 1);
		ck_assert_int_eq(s.idx[i], i);
	}
	/* new records follow the replayed ones */
	ck_assert_uint_eq(append(j, 50), 51);
	journal_close(j);
}
END_TEST

/* The last record cut at every byte: the others survive, seq continues. */
START_TEST(torn_tail_cut_at_every_byte)
{
	char path[400];
	struct stat st;
	struct seen s;
	off_t full, last_start;
	struct journal *j;
	int fd;

	j = open_j(1 << 20, 0);
	append(j, 0);
	append(j, 1);
	newest_segment(path, sizeof path);
	ck_assert_int_eq(stat(path, &st), 0);
	last_start = st.st_size;
	append(j, 2);
	journal_close(j);
	ck_assert_int_eq(stat(path, &st), 0);
	full = st.st_size;

	for (off_t cut = full - 1; cut >= last_start; cut--) {
		ck_assert_int_eq(truncate(path, cut), 0);
		j = open_j(1 << 20, 0);
		ck_assert_uint_eq(journal_found(j), 2);
		ck_assert_int_eq(stat(path, &st), 0);
		ck_assert_int_eq(st.st_size, last_start); /* cut back to whole records */
		journal_close(j);
	}
	/* zeros after the last record (blocks allocated, never written) */
	fd = open(path, O_WRONLY | O_APPEND);
	ck_assert_int_ge(fd, 0);
	{
		char zeros[4096] = {0};

		ck_assert_int_eq(write(fd, zeros, sizeof zeros), (ssize_t)sizeof zeros);
	}
	close(fd);
	j = open_j(1 << 20, 0);
	ck_assert_uint_eq(journal_found(j), 2);
	replay_all(j, &s);
	ck_assert_int_eq(s.n, 2);
	ck_assert_uint_eq(append(j, 7), 3);
	journal_close(j);
}
END_TEST

/* A flipped byte in the newest segment: records before it are kept. */
START_TEST(crc_error_in_newest_segment)
{
	char path[400];
	struct stat st;
	struct seen s;
	off_t second;
	struct journal *j;
	int fd;
	uint64_t torn = metrics.journal_torn;

	j = open_j(1 << 20, 0);
	append(j, 0);
	newest_segment(path, sizeof path);
	ck_assert_int_eq(stat(path, &st), 0);
	second = st.st_size;
	append(j, 1);
	append(j, 2);
	journal_close(j);
	/* a payload byte of the second record */
	fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, "X", 1, second + 30), 1);
	close(fd);

	j = open_j(1 << 20, 0);
	ck_assert_uint_eq(journal_found(j), 1);
	ck_assert_uint_eq(metrics.journal_torn, torn + 1);
	replay_all(j, &s);
	ck_assert_int_eq(s.n, 1);
	ck_assert_int_eq(s.idx[0], 0);
	journal_close(j);
}
END_TEST

/* Damage in an older segment: what precedes it is replayed, the file set aside. */
START_TEST(crc_error_in_older_segment)
{
	char path[400];
	struct seen s;
	struct journal *j;
	uint64_t corrupt = metrics.journal_corrupt;
	int fd, i;

	j = open_j(1 << 22, 64 << 10);
	for (i = 0; i < 10; i++)
		append(j, i); /* 60 bytes each */
	journal_close(j);
	newest_segment(path, sizeof path);
	/* a newer segment after it: a restart that appended before replaying */
	j = open_j(1 << 22, 64 << 10);
	append(j, 100);
	journal_close(j);
	/* a payload byte of the sixth record of the older segment */
	fd = open(path, O_RDWR);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, "\xff", 1, 16 + 5 * 60 + 30), 1);
	close(fd);

	j = open_j(1 << 22, 64 << 10);
	ck_assert_uint_eq(metrics.journal_corrupt, corrupt + 1);
	ck_assert_uint_eq(journal_found(j), 6);
	replay_all(j, &s);
	ck_assert_int_eq(s.n, 6);
	for (i = 0; i < 5; i++)
		ck_assert_int_eq(s.idx[i], i);
	ck_assert_int_eq(s.idx[5], 100);
	ck_assert_int_eq(count_files(".corrupt"), 0);
	for (i = 0; i < s.n; i++)
		journal_release(j, s.seq[i]);
	/* all committed: both are done with, the damaged one kept aside */
	ck_assert_int_eq(count_files(".corrupt"), 1);
	ck_assert_int_eq(count_files(".jnl"), 0);
	journal_close(j);
}
END_TEST

/* Segments go only when every item in them committed, in any order. */
START_TEST(trim_out_of_order)
{
	struct journal *j = open_j(1 << 22, 64 << 10);
	uint64_t seqs[3000];
	uint64_t bytes_full;
	int i, segs;

	for (i = 0; i < 3000; i++) {
		seqs[i] = append(j, i % 900);
		journal_hold(j, seqs[i], 1); /* a second item from the message */
	}
	segs = count_files(".jnl");
	ck_assert_int_ge(segs, 3);
	bytes_full = journal_bytes(j);
	/* commit the second half first, one item of each */
	for (i = 2999; i >= 1500; i--)
		journal_release(j, seqs[i]);
	ck_assert_int_eq(count_files(".jnl"), segs);
	for (i = 2999; i >= 1500; i--)
		journal_release(j, seqs[i]);
	/* the first half still holds the older segments */
	ck_assert_int_ge(count_files(".jnl"), 2);
	for (i = 0; i < 1500; i++) {
		journal_release(j, seqs[i]);
		journal_release(j, seqs[i]);
	}
	/* only the segment being written may stay, if it is small and young */
	ck_assert_int_le(count_files(".jnl"), 1);
	ck_assert_uint_lt(journal_bytes(j), bytes_full / 2);
	journal_close(j);
	/* nothing pending at close: nothing to replay */
	j = open_j(1 << 22, 64 << 10);
	ck_assert_uint_eq(journal_found(j), 0);
	journal_close(j);
	ck_assert_int_eq(count_files(".jnl"), 0);
}
END_TEST

/* Replayed records stay until released, then go. */
START_TEST(replayed_segments_trimmed_when_committed)
{
	struct journal *j = open_j(1 << 22, 64 << 10);
	struct seen s;
	int i;

	for (i = 0; i < 20; i++)
		append(j, i);
	journal_close(j);
	j = open_j(1 << 22, 64 << 10);
	replay_all(j, &s);
	ck_assert_int_eq(s.n, 20);
	ck_assert_int_eq(count_files(".jnl"), 1);
	for (i = 0; i < 20; i++)
		journal_release(j, s.seq[i]);
	ck_assert_int_eq(count_files(".jnl"), 0);
	journal_close(j);
}
END_TEST

/* A segment created just before the crash, its header not whole: dropped. */
START_TEST(torn_segment_header)
{
	char path[400];
	struct journal *j;
	uint64_t corrupt = metrics.journal_corrupt;
	int fd;

	snprintf(path, sizeof path, "%s/%016" PRIx64 ".jnl", dir, (uint64_t)7);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, "PPJSE", 5), 5);
	close(fd);
	j = open_j(1 << 20, 0);
	ck_assert_uint_eq(journal_found(j), 0);
	ck_assert_uint_eq(metrics.journal_corrupt, corrupt);
	ck_assert_int_eq(count_files(".jnl"), 0);
	ck_assert_uint_eq(append(j, 1), 1);
	journal_close(j);
}
END_TEST

START_TEST(full_refuses)
{
	struct journal *j = open_j(4096, 0);
	char err[256];
	uint64_t seq;
	int i, rc = 0;

	for (i = 0; i < 1000 && rc == 0; i++)
		rc = journal_append(
		    j, 1, "meters/m/reading", "{\"seq\":1}", 9, &seq, err, sizeof err);
	ck_assert_int_eq(rc, 1);
	ck_assert_int_gt(i, 10);
	ck_assert_uint_le(journal_bytes(j), 4096);
	journal_close(j);
}
END_TEST

START_TEST(state_file)
{
	struct journal *j = open_j(1 << 20, 0);

	ck_assert(!journal_state_is(j, "session", "prepaidd@h:1883"));
	ck_assert_int_eq(journal_state_set(j, "session", "prepaidd@h:1883"), 0);
	ck_assert(journal_state_is(j, "session", "prepaidd@h:1883"));
	ck_assert(!journal_state_is(j, "session", "other@h:1883"));
	journal_close(j);
}
END_TEST

START_TEST(crc32c_known_value)
{
	/* RFC 3720 B.4: 32 bytes of zeros */
	unsigned char z[32] = {0};

	ck_assert_uint_eq(journal_crc32c(0, "123456789", 9), 0xe3069283u);
	ck_assert_uint_eq(journal_crc32c(0, z, sizeof z), 0x8a9136aau);
}
END_TEST

int
main(void)
{
	Suite *s = suite_create("journal");
	TCase *tc = tcase_create("journal");
	SRunner *sr;
	int failed;

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, replayed_in_order_after_restart);
	tcase_add_test(tc, torn_tail_cut_at_every_byte);
	tcase_add_test(tc, crc_error_in_newest_segment);
	tcase_add_test(tc, crc_error_in_older_segment);
	tcase_add_test(tc, trim_out_of_order);
	tcase_add_test(tc, replayed_segments_trimmed_when_committed);
	tcase_add_test(tc, torn_segment_header);
	tcase_add_test(tc, full_refuses);
	tcase_add_test(tc, state_file);
	tcase_add_test(tc, crc32c_known_value);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
