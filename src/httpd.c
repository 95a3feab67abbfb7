/* httpd.c: placeholder, being written. */
