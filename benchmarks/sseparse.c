/* Incremental chunked-transfer and Server-Sent-Events parsers (see sseparse.h). */
#define _GNU_SOURCE
#include "sseparse.h"

#include <stdlib.h>
#include <string.h>

enum { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER, CH_DONE };

void chunk_decoder_init(struct chunk_decoder *d) {
    memset(d, 0, sizeof *d);
    d->state = CH_SIZE;
}

/* Collect bytes into d->line up to '\n'; returns 1 when a full line (without CRLF) is there. */
static int take_line(struct chunk_decoder *d, char ch) {
    if (ch == '\n') {
        if (d->llen && d->line[d->llen - 1] == '\r') d->llen--;
        d->line[d->llen] = '\0';
        return 1;
    }
    if (d->llen < sizeof d->line - 1) d->line[d->llen++] = ch;
    return 0;
}

int chunk_decode(struct chunk_decoder *d, const char *in, size_t *in_used, char *out,
                 size_t *out_len) {
    size_t i = 0, o = 0, n = *in_used, cap = *out_len;
    int rc = 0;
    while (i < n && rc == 0) {
        switch (d->state) {
        case CH_SIZE:
            if (take_line(d, in[i++])) {
                char *end;
                d->left = strtol(d->line, &end, 16);
                if (end == d->line || d->left < 0) { rc = -1; break; }
                d->llen = 0;
                d->state = d->left ? CH_DATA : CH_TRAILER;
            }
            break;
        case CH_DATA: {
            size_t k = n - i;
            if ((long)k > d->left) k = d->left;
            if (k > cap - o) k = cap - o;
            if (k == 0) goto out;  /* output full */
            memcpy(out + o, in + i, k);
            i += k;
            o += k;
            d->left -= k;
            if (d->left == 0) d->state = CH_DATA_END;
            break;
        }
        case CH_DATA_END:
            if (take_line(d, in[i++])) {
                if (d->llen) { rc = -1; break; }
                d->state = CH_SIZE;
            }
            break;
        case CH_TRAILER:
            if (take_line(d, in[i++])) {
                if (d->llen == 0) { d->state = CH_DONE; rc = 1; }
                d->llen = 0;
            }
            break;
        default:
            rc = 1;
        }
    }
out:
    *in_used = i;
    *out_len = o;
    return rc;
}

void sse_init(struct sse_parser *p) {
    memset(p, 0, sizeof *p);
    p->seq = -1;
}

long status_seq(const char *json, size_t len) {
    const char *end = json + len;
    const char *k = memmem(json, len, "\"status\"", 8);
    if (!k) return -1;
    k += 8;
    while (k < end && (*k == ' ' || *k == ':')) k++;
    if (k + 2 > end || k[0] != '"' || k[1] != 's') return -1;
    k += 2;
    long v = 0;
    const char *digits = k;
    while (k < end && *k >= '0' && *k <= '9') v = v * 10 + (*k++ - '0');
    return (k > digits && k < end && *k == '"') ? v : -1;
}

/* A complete line: blank ends the event, data: feeds it, anything else is ignored
 * (comments ":", id:, retry:, event:). */
static int end_line(struct sse_parser *p, long *seq_out) {
    int dispatched = 0;
    if (p->len == 0) {
        if (p->has_data) { *seq_out = p->seq; dispatched = 1; }
        p->has_data = 0;
        p->seq = -1;
    } else if (p->len >= 5 && memcmp(p->line, "data:", 5) == 0) {
        long s = status_seq(p->line + 5, p->len - 5);
        p->has_data = 1;
        if (s >= 0) p->seq = s;
    }
    p->len = 0;
    return dispatched;
}

int sse_feed(struct sse_parser *p, const char *buf, size_t *used, long *seqs, int max) {
    size_t i = 0, n = *used;
    int k = 0;
    while (i < n && k < max) {
        char ch = buf[i++];
        if (ch == '\n' && p->after_cr) { p->after_cr = 0; continue; }
        p->after_cr = ch == '\r';
        if (ch == '\n' || ch == '\r') {
            k += end_line(p, &seqs[k]);
        } else if (p->len < sizeof p->line) {
            p->line[p->len++] = ch;
        }
    }
    *used = i;
    return k;
}
