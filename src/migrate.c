/* migrate.c: placeholder, being written. */
