/* A native pricing helper, as services load through ctypes or a C extension. Its bug: a coupon code that
   is missing arrives as NULL, and compute_discount reads through it. coredump.analyze finds this frame. */
#include <stddef.h>
#include <string.h>

int compute_discount(const char *coupon, int cents) {
    size_t length = strlen(coupon);
    return length > 4 ? cents / 10 : 0;
}
