/* pgconn.c: placeholder, being written. */
