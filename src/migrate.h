/*
 * migrate.h: the schema migrations (sql/NNN_name.sql) and the files of
 * functions, views and triggers by concern (sql/meters.sql ...), embedded
 * into the binary by sql/embed.sh, and `prepaidd --migrate`, which applies
 * the pending migrations, each in its own transaction, then re-applies the
 * concern files and records their hash. Also the start-up check that the
 * database schema is the one this binary expects.
 */
#ifndef PREPAIDD_MIGRATE_H
#define PREPAIDD_MIGRATE_H

struct migration {
	int version;
	const char *name;
	const char *sql;
};

extern const struct migration migrations[];
extern const int migrations_count;

/* The concern files, in the order --migrate applies them, and their SHA-256. */
extern const struct migration sql_code[];
extern const int sql_code_count;
extern const char sql_code_hash[];

/* The highest version this binary carries. */
int migrate_latest(void);

/*
 * Apply pending migrations over a blocking connection (command-line use
 * only, never on the event loop). Prints what it does to stdout. Returns 0
 * on success, -1 with a message on stderr.
 */
int migrate_run(const char *conninfo);

/*
 * SQL that yields one row: the applied schema version (0 if none), the
 * SHA-256 of the concern files --migrate applied last (NULL if none),
 * whether the login is a superuser, whether it is a member of
 * prepaid_owner, and its name.
 */
extern const char migrate_version_sql[];

#endif
