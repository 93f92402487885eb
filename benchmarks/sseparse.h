/*
 * Incremental parsers for sseload: HTTP/1.1 chunked transfer decoding and Server-Sent
 * Events.  Both keep their state between reads, because a read may end anywhere — in a
 * chunk-size line, in the middle of an event, between "\r" and "\n".
 */
#ifndef SSEPARSE_H
#define SSEPARSE_H
#include <stddef.h>

struct chunk_decoder {
    int state;
    long left;          /* payload bytes left in the current chunk */
    char line[64];      /* chunk-size or trailer line being collected */
    size_t llen;
};

void chunk_decoder_init(struct chunk_decoder *d);

/* Decode in[0..*in_used) into out (capacity *out_len).  On return *in_used and *out_len
 * say how much was consumed and produced.  Returns 0 while the body goes on, 1 once the
 * terminating zero-size chunk (and trailer) has been read, -1 on malformed framing. */
int chunk_decode(struct chunk_decoder *d, const char *in, size_t *in_used, char *out,
                 size_t *out_len);

struct sse_parser {
    char line[1024];    /* current line; longer lines are truncated (we only need status) */
    size_t len;
    int after_cr;       /* last byte was '\r': a following '\n' belongs to the same break */
    int has_data;       /* the event being built has at least one data: line */
    long seq;           /* ping number found in its data, -1 if none */
};

void sse_init(struct sse_parser *p);

/* Feed buf[0..*used); writes the ping number of each completed event (an event ends at a
 * blank line and needs a data: line; -1 when its data carries no "s<n>" status) to
 * seqs[0..max).  Stops early when seqs is full; *used says how much was consumed. */
int sse_feed(struct sse_parser *p, const char *buf, size_t *used, long *seqs, int max);

/* The n of a status "s<n>" in a JSON text ("status": "s42" -> 42), else -1. */
long status_seq(const char *json, size_t len);

#endif
