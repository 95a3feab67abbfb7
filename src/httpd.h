#ifndef PREPAIDD_HTTPD_H
#define PREPAIDD_HTTPD_H
#endif
