/*
 * sseload — the load client of the heartbeat benchmark (one epoll loop, one core).
 *
 * Why C: the fan-out scenario delivers ~100,000 events/s over 2,000 sockets; a Python
 * client would be the bottleneck and blur the server figures.  This program opens N
 * Server-Sent-Events subscribers at once (the accept burst), then on "go" (a line on
 * stdin) publishes P pings and records, per subscriber, which pings arrived and when.
 *
 * Pings are numbered: ping i carries status "s<i>" and goes to user (i % ping_users);
 * subscriber j watches user (j % users).  Latency is measured from the ping's send time
 * (--rate 0: back-to-back, one publisher connection, next ping once the previous is
 * answered) or from its *scheduled* time (--rate R: open loop, R pings/s over a pool of
 * connections, so a slow server cannot slow the schedule down — no coordinated omission).
 *
 * Population mode (--contacts C): subscriber j is user j and its one stream names C
 * contacts (GET /subscribe?user=a&user=b... for heartbeat, GET /subscribe/a,b,... for
 * nchan), chosen from a seeded permutation so every user is watched by exactly C others.
 * With --measure-from M, only pings M.. count in the latencies and `lost` (the earlier
 * ones warm up), and with --rate the harness is told when that window opens and closes
 * ({"event":"window_start"} / {"event":"window_end"}, the latter with the client's CPU).
 *
 * Protocol with the harness: stdout gets one JSON line {"event":"subscribed",...} once all
 * subscribers have their response headers (or the timeout passed), then waits for "go" on
 * stdin (anything else, or EOF, means stop); after publishing it prints {"event":"done",...}
 * and exits.  Every phase is bounded in time.
 *
 * Quiet mode (--status-changes PCT, heartbeat only): each stream asks for changes=only, and
 * a user's ping changes their status (to "s<i>") with probability PCT% (a user's first
 * ping always does: it brings them online); every other ping repeats the status they
 * have, which a quiet stream is not sent.  Only the changing pings are expected.  In
 * either mode the bytes and events the streams receive during the measured window are
 * counted, to compare the per-ping mode with the quiet one per watcher.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "sseparse.h"

enum style { HEARTBEAT, NCHAN };
enum kind { SUB, PUB };
enum { TAG_STDIN = -1, TAG_TIMER = -2 };

struct conn {
    int fd;
    enum kind kind;
    int idx;            /* subscriber index or publisher index */
    int connected;
    int headers_done;   /* response headers parsed */
    int status;
    int chunked;
    long body_left;     /* publisher, identity body: bytes still to skip */
    struct chunk_decoder chunks;
    struct sse_parser sse;
    int inflight;       /* publisher: ping seq in flight, -1 when idle */
    double sent_at;
    size_t rlen;
    char rbuf[4096];
};

static struct {
    enum style style;
    struct addrinfo *addr;
    char host[128];
    const char *prefix;
    int subs, users, pings, ping_users, pub_conns;
    double rate, sub_timeout, quiet, deadline;
    int contacts;       /* population mode: contacts per stream (0: one user per stream) */
    unsigned long seed; /* of the contact graph */
    int measure_from;   /* first ping counted in latencies and losses */
    int max_pending;    /* subscriber handshakes in flight at once (0: no bound) */
    int source_addrs;   /* spread connections over 127.0.0.1..N (IPv4 loopback only) */
    int status_changes; /* quiet mode: % of pings that change status (0: every ping is sent) */
} opt = {HEARTBEAT, NULL, "", "u", 0, 1, 0, 1, 1, 0.0, 30.0, 3.0, 60.0, 0, 1, 0, 0, 1, 0};

static struct conn *subs;        /* opt.subs entries */
static struct conn *pubs;        /* opt.pub_conns entries */
/* Two epoll sets: the main one holds stdin, the timer, the publishers and the subscriber
 * set itself, so a publisher's answer is handled at most SUB_BATCH subscriber reads after
 * it arrives — otherwise back-to-back pings would wait behind 2,000 reads each time. */
static int main_ep, sub_ep, timerfd;
#define SUB_BATCH 128

/* Per ping: reference time for latency, whether answered 2xx, publish latency. */
static double *ping_ref;
static char *ping_state;         /* 0 unsent, 1 in flight, 2 ok, 3 failed */
static char *ping_quiet;         /* quiet mode: 1 for a ping that repeats the user's status */
static int *user_status;         /* quiet mode: the seq whose "s<seq>" is the user's status, or -1 */
static long win_sub_bytes, win_sub_events;  /* what the streams got in the measured window */
static double *pub_lat;
static int n_pub_lat;
static uint8_t *seen;            /* bitmap subs x pings: first delivery recorded */
static double *lat;              /* one entry per first delivery */
static long n_lat;

/* Population mode: pos[] is each user's place in a seeded permutation perm[]; contact k
 * of user j is perm[(pos[j] + offset[k]) % users], the offsets distinct in 1..users-1. */
static int *perm, *pos, *offset;
static int rounds = 1;           /* pings per user: pings / ping_users, rounded up */
static long n_delivered;         /* first deliveries, measured or not */
static long n_warm;              /* ... of pings before --measure-from */
static int win_state;            /* 0 before the measured window, 1 in it, 2 after */
static double win_cpu0;

static long n_dups, n_stray, n_misrouted, n_sub_closed, n_sub_failed, n_sub_ok;
static double t_last_accept, t_last_delivery, t_first_send, t_last_send, max_send_lag;
static int next_send;            /* next ping seq to send */
static double t_go;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *what) {
    fprintf(stderr, "sseload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void epoll_set(int ep, int op, int fd, uint32_t events, void *ptr) {
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    if (epoll_ctl(ep, op, fd, &ev) < 0) die("epoll_ctl");
}

static void user_name(char *out, size_t n, int user) {
    snprintf(out, n, "%s%d", opt.prefix, user);
}

static uint64_t rng_state;
static uint64_t rng_next(void) {  /* splitmix64: the same graph for the same seed, anywhere */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void make_contacts(void) {
    int n = opt.users, c = opt.contacts;
    perm = malloc(n * sizeof *perm);
    pos = malloc(n * sizeof *pos);
    offset = malloc(c * sizeof *offset);
    if (!perm || !pos || !offset) die("malloc");
    rng_state = opt.seed;
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int k = (int)(rng_next() % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[k];
        perm[k] = t;
    }
    for (int i = 0; i < n; i++) pos[perm[i]] = i;
    for (int k = 0; k < c; k++) {
        int d, dup;
        do {
            d = 1 + (int)(rng_next() % (uint64_t)(n - 1));
            dup = 0;
            for (int m = 0; m < k; m++) dup |= offset[m] == d;
        } while (dup);
        offset[k] = d;
    }
}

static int contact(int j, int k) { return perm[(pos[j] + offset[k]) % opt.users]; }

/* Which of subscriber j's contacts user u is, or -1. */
static int contact_slot(int j, int u) {
    int d = ((pos[u] - pos[j]) % opt.users + opt.users) % opt.users;
    for (int k = 0; k < opt.contacts; k++)
        if (offset[k] == d) return k;
    return -1;
}

static int open_socket(void) {
    int fd = socket(opt.addr->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (opt.source_addrs > 1) {
        /* Past ~28,000 connections one source address runs out of ephemeral ports to one
         * server port; the kernel picks the port at connect() for the whole 4-tuple. */
        static unsigned next_src;
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl(0x7f000001u + next_src++ % (unsigned)opt.source_addrs);
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind source address");
    }
    if (connect(fd, opt.addr->ai_addr, opt.addr->ai_addrlen) < 0 && errno != EINPROGRESS)
        die("connect");
    return fd;
}

static void reset_response(struct conn *c) {
    c->headers_done = 0;
    c->status = 0;
    c->chunked = 0;
    c->body_left = 0;
    chunk_decoder_init(&c->chunks);
}

static void close_conn(struct conn *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

/* Parse the status line and the headers we care about; returns header length or 0. */
static size_t parse_headers(struct conn *c) {
    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (!end) return 0;
    *end = '\0';
    c->status = (strncmp(c->rbuf, "HTTP/1.", 7) == 0) ? atoi(c->rbuf + 9) : 0;
    for (char *line = strstr(c->rbuf, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, "transfer-encoding:", 18) == 0 && strcasestr(line, "chunked"))
            c->chunked = 1;
        else if (strncasecmp(line, "content-length:", 15) == 0)
            c->body_left = atol(line + 15);
    }
    c->headers_done = 1;
    return (size_t)(end - c->rbuf) + 4;
}

static void consume(struct conn *c, size_t n) {
    memmove(c->rbuf, c->rbuf + n, c->rlen - n);
    c->rlen -= n;
}

/* ---- subscribers ---------------------------------------------------------------- */

static void on_event(struct conn *c, long seq) {
    double t = now();
    if (win_state == 1) win_sub_events++;
    if (seq < 0 || seq >= opt.pings || ping_state[seq] == 0) {
        n_stray++;  /* a stored ping from before the run, or a stranger */
        return;
    }
    size_t bit;
    if (opt.contacts) {
        int k = contact_slot(c->idx, (int)(seq % opt.ping_users));
        if (k < 0) {
            n_misrouted++;
            return;
        }
        bit = ((size_t)c->idx * opt.contacts + k) * rounds + seq / opt.ping_users;
    } else {
        if ((int)(seq % opt.ping_users) != c->idx % opt.users) {
            n_misrouted++;
            return;
        }
        bit = (size_t)c->idx * opt.pings + seq;
    }
    if (seen[bit >> 3] & (1u << (bit & 7))) {
        n_dups++;
        return;
    }
    seen[bit >> 3] |= 1u << (bit & 7);
    n_delivered++;
    if (seq >= opt.measure_from) lat[n_lat++] = t - ping_ref[seq];
    else n_warm++;
    t_last_delivery = t;
}

static void sub_request(struct conn *c) {
    char user[64], path[16384], req[17000];
    size_t p = 0;
    if (!opt.contacts) {
        user_name(user, sizeof user, c->idx % opt.users);
        p = snprintf(path, sizeof path, "/subscribe/%s", user);
    } else {
        /* heartbeat: /subscribe?user=a&user=b...; nchan: /subscribe/a,b,... (multiplexed) */
        p = snprintf(path, sizeof path, opt.style == HEARTBEAT ? "/subscribe" : "/subscribe/");
        for (int k = 0; k < opt.contacts && p < sizeof path; k++) {
            user_name(user, sizeof user, contact(c->idx, k));
            p += snprintf(path + p, sizeof path - p, "%s%s",
                          opt.style == HEARTBEAT ? (k ? "&user=" : "?user=") : (k ? "," : ""), user);
        }
        if (p >= sizeof path) { errno = ENAMETOOLONG; die("subscribe path"); }
    }
    if (opt.status_changes) p += snprintf(path + p, sizeof path - p, "%schanges=only",
                                          strchr(path, '?') ? "&" : "?");
    if (p >= sizeof path) { errno = ENAMETOOLONG; die("subscribe path"); }
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n",
                     path, opt.host);
    if (write(c->fd, req, n) != n) {
        n_sub_failed++;
        close_conn(c);
        return;
    }
    c->connected = 1;
    epoll_set(sub_ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
}

/* Feed body bytes (after de-chunking) to the SSE parser; each complete event -> on_event. */
static void sub_body(struct conn *c, const char *p, size_t n) {
    long seqs[64];
    while (n > 0) {
        size_t used = n;
        int k = sse_feed(&c->sse, p, &used, seqs, 64);
        for (int i = 0; i < k; i++) on_event(c, seqs[i]);
        p += used;
        n -= used;
    }
}

static void sub_readable(struct conn *c) {
    ssize_t r = read(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen);
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        if (!c->headers_done) n_sub_failed++;
        else n_sub_closed++;
        close_conn(c);
        return;
    }
    c->rlen += r;
    if (win_state == 1) win_sub_bytes += r;
    if (!c->headers_done) {
        size_t h = parse_headers(c);
        if (!h) {
            if (c->rlen == sizeof c->rbuf) { n_sub_failed++; close_conn(c); }
            return;
        }
        consume(c, h);
        if (c->status != 200) { n_sub_failed++; close_conn(c); return; }
        n_sub_ok++;
        t_last_accept = now();
    }
    if (!c->chunked) {
        sub_body(c, c->rbuf, c->rlen);
        c->rlen = 0;
        return;
    }
    char out[sizeof c->rbuf];
    size_t in_used = c->rlen, out_len = sizeof out;
    int rc = chunk_decode(&c->chunks, c->rbuf, &in_used, out, &out_len);
    consume(c, in_used);
    sub_body(c, out, out_len);
    if (rc != 0) {  /* end of stream, or malformed framing */
        n_sub_closed++;
        close_conn(c);
    }
}

/* ---- publishers ----------------------------------------------------------------- */

static int pub_send(struct conn *c, int seq, double t) {
    char user[64], body[256], req[1024];
    user_name(user, sizeof user, seq % opt.ping_users);
    int n, status = seq;
    if (opt.status_changes) {  /* pings go out in seq order: a user's status is their last change */
        int *current = &user_status[seq % opt.ping_users];
        if (!ping_quiet[seq]) *current = seq;
        status = *current;
    }
    if (opt.style == HEARTBEAT) {
        int blen = snprintf(body, sizeof body, "{\"status\":\"s%d\"}", status);
        n = snprintf(req, sizeof req,
                     "POST /ping HTTP/1.1\r\nHost: %s\r\n"
                     "X-User-Claim: {\"userid\":\"%s\",\"clientid\":\"c\"}\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     opt.host, user, blen, body);
    } else {
        int blen = snprintf(body, sizeof body,
                            "{\"time\":%ld,\"status\":\"s%d\",\"userid\":\"%s\"}",
                            (long)time(NULL), seq, user);
        n = snprintf(req, sizeof req,
                     "POST /ping/%s HTTP/1.1\r\nHost: %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                     user, opt.host, blen, body);
    }
    if (write(c->fd, req, n) != n) return -1;
    c->inflight = seq;
    c->sent_at = t;
    ping_state[seq] = 1;
    return 0;
}

static void pub_connect(struct conn *c, int idx) {
    memset(c, 0, sizeof *c);
    c->kind = PUB;
    c->idx = idx;
    c->inflight = -1;
    c->fd = open_socket();
    c->connected = 0;
    reset_response(c);
    epoll_set(main_ep, EPOLL_CTL_ADD, c->fd, EPOLLIN | EPOLLOUT, c);
}

static void pub_finish(struct conn *c, int ok) {
    int seq = c->inflight;
    if (seq >= 0) {
        ping_state[seq] = ok ? 2 : 3;
        pub_lat[n_pub_lat++] = now() - c->sent_at;
    }
    c->inflight = -1;
    reset_response(c);
}

static void pub_readable(struct conn *c) {
    ssize_t r = read(c->fd, c->rbuf + c->rlen, sizeof c->rbuf - c->rlen);
    if (r <= 0) {
        if (r < 0 && errno == EAGAIN) return;
        pub_finish(c, 0);  /* server closed: the ping in flight failed; reconnect */
        close_conn(c);
        pub_connect(c, c->idx);
        return;
    }
    c->rlen += r;
    if (!c->headers_done) {
        size_t h = parse_headers(c);
        if (!h) return;
        consume(c, h);
    }
    int ok = c->status >= 200 && c->status < 300;
    if (c->chunked) {
        char sink[sizeof c->rbuf];
        size_t in_used = c->rlen, out_len = sizeof sink;
        int done = chunk_decode(&c->chunks, c->rbuf, &in_used, sink, &out_len);
        consume(c, in_used);
        if (done == 1) pub_finish(c, ok);
        return;
    }
    size_t skip = c->rlen < (size_t)c->body_left ? c->rlen : (size_t)c->body_left;
    consume(c, skip);
    c->body_left -= skip;
    if (c->body_left == 0) pub_finish(c, ok);
}

/* Number of pings due by time t (all at once in back-to-back mode). */
static int pings_due(double t) {
    if (opt.rate <= 0) return opt.pings;
    long due = (long)floor((t - t_go) * opt.rate) + 1;
    return due > opt.pings ? opt.pings : (int)due;
}

static void arm_timer(void) {
    struct itimerspec its = {0};
    if (opt.rate > 0 && next_send < opt.pings) {
        double at = t_go + next_send / opt.rate;
        its.it_value.tv_sec = (time_t)at;
        its.it_value.tv_nsec = (long)((at - floor(at)) * 1e9);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0) its.it_value.tv_nsec = 1;
    }
    timerfd_settime(timerfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* Send every due ping on an idle publisher connection; the rest wait (still due). */
static void pump(void) {
    double t = now();
    int due = pings_due(t);
    for (int i = 0; i < opt.pub_conns && next_send < due; i++) {
        struct conn *c = &pubs[i];
        if (c->fd < 0 || !c->connected || c->inflight >= 0) continue;
        int seq = next_send;
        double sched = opt.rate > 0 ? t_go + seq / opt.rate : t;
        ping_ref[seq] = sched;
        if (pub_send(c, seq, t) < 0) {
            ping_state[seq] = 3;
        } else if (t - sched > max_send_lag) {
            max_send_lag = t - sched;
        }
        if (seq == 0) t_first_send = t;
        t_last_send = t;
        next_send++;
    }
    arm_timer();
}

/* ---- main loop ------------------------------------------------------------------ */

static int stdin_command(void) {
    char buf[64];
    ssize_t r = read(0, buf, sizeof buf - 1);
    if (r <= 0) return 's';
    buf[r] = '\0';
    return strncmp(buf, "go", 2) == 0 ? 'g' : 's';
}

static void on_connected(struct conn *c, uint32_t events) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err || !(events & EPOLLOUT)) {
        if (c->kind == SUB) { n_sub_failed++; close_conn(c); }
        else { close_conn(c); pub_connect(c, c->idx); }
    } else if (c->kind == SUB) {
        sub_request(c);
    } else {
        c->connected = 1;
        epoll_set(main_ep, EPOLL_CTL_MOD, c->fd, EPOLLIN, c);
    }
}

static void on_ready(struct conn *c, uint32_t events) {
    if (c->fd < 0) return;
    if (!c->connected) on_connected(c, events);
    else if (c->kind == SUB) sub_readable(c);
    else { pub_readable(c); pump(); }
}

/* Up to SUB_BATCH ready subscribers, without waiting. */
static void poll_subs(void) {
    struct epoll_event evs[SUB_BATCH];
    int n = epoll_wait(sub_ep, evs, SUB_BATCH, 0);
    for (int i = 0; i < n; i++) on_ready(evs[i].data.ptr, evs[i].events);
}

/* One round of the main set; returns a stdin command ('g' or 's') if one arrived, else 0. */
static int poll_once(int timeout_ms) {
    struct epoll_event evs[64];
    int n = epoll_wait(main_ep, evs, 64, timeout_ms);
    if (n < 0 && errno != EINTR) die("epoll_wait");
    int cmd = 0;
    for (int i = 0; i < n; i++) {
        void *ptr = evs[i].data.ptr;
        if (ptr == &opt.subs) {
            cmd = stdin_command();
        } else if (ptr == &sub_ep) {
            poll_subs();
        } else if (ptr == &timerfd) {
            uint64_t x;
            if (read(timerfd, &x, sizeof x) < 0 && errno != EAGAIN) die("timerfd");
            pump();
        } else {
            on_ready(ptr, evs[i].events);
        }
    }
    return cmd;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, long n, double q) {
    if (n == 0) return NAN;
    long i = (long)ceil(q * n) - 1;
    return v[i < 0 ? 0 : (i >= n ? n - 1 : i)];
}

static void print_ms(const char *key, double seconds) {
    if (isnan(seconds)) printf(",\"%s\":null", key);
    else printf(",\"%s\":%.3f", key, seconds * 1000);
}

/* One (answered ping, open stream that names its user) pair: expected, delivered? */
static void tally(int seq, size_t bit, long *expected, long *lost, long *expected_warm,
                  long *lost_warm, int *lost_by_ping) {
    if (ping_state[seq] != 2 || ping_quiet[seq]) return;
    int missing = !(seen[bit >> 3] & (1u << (bit & 7)));
    if (seq < opt.measure_from) {
        (*expected_warm)++;
        *lost_warm += missing;
        return;
    }
    (*expected)++;
    if (missing) { (*lost)++; lost_by_ping[seq]++; }
}

static void report(double cpu_run) {
    long ok = 0, failed = 0, unanswered = 0, expected = 0, lost = 0, expected_warm = 0,
         lost_warm = 0;
    long n_quiet = 0;
    for (int i = 0; i < opt.pings; i++) {
        n_quiet += ping_quiet[i];
        ok += ping_state[i] == 2;
        failed += ping_state[i] == 3;
        unanswered += ping_state[i] == 1;
    }
    /* Each (ping answered 2xx, accepted subscriber of its user) pair should be delivered. */
    int *lost_by_ping = calloc(opt.pings + 1, sizeof(int));
    for (int j = 0; j < opt.subs; j++) {
        if (!subs[j].headers_done) continue;
        if (opt.contacts) {
            for (int k = 0; k < opt.contacts; k++)
                for (int r = 0; r < rounds; r++) {
                    long seq = (long)r * opt.ping_users + contact(j, k);
                    if (seq < opt.pings)
                        tally((int)seq, ((size_t)j * opt.contacts + k) * rounds + r, &expected,
                              &lost, &expected_warm, &lost_warm, lost_by_ping);
                }
            continue;
        }
        if (j % opt.users >= opt.ping_users) continue;
        for (int i = j % opt.users; i < opt.pings; i += opt.ping_users)
            tally(i, (size_t)j * opt.pings + i, &expected, &lost, &expected_warm, &lost_warm,
                  lost_by_ping);
    }
    qsort(lat, n_lat, sizeof *lat, cmp_double);
    qsort(pub_lat, n_pub_lat, sizeof *pub_lat, cmp_double);
    double span = n_delivered ? t_last_delivery - t_first_send : 0.0;
    printf("{\"event\":\"done\",\"pings_sent\":%d,\"pings_ok\":%ld,\"pings_failed\":%ld,"
           "\"pings_unanswered\":%ld,\"expected\":%ld,\"delivered\":%ld,\"lost\":%ld,"
           "\"duplicates\":%ld,\"stray\":%ld,\"misrouted\":%ld,\"subs_closed\":%ld,"
           "\"send_s\":%.3f,\"span_s\":%.3f,\"deliveries_per_s\":%.0f",
           next_send, ok, failed, unanswered, expected, n_lat, lost, n_dups, n_stray,
           n_misrouted, n_sub_closed, t_last_send - t_first_send, span,
           span > 0 ? n_delivered / span : 0.0);
    if (opt.measure_from > 0)
        printf(",\"measured_from_ping\":%d,\"expected_warmup\":%ld,\"delivered_warmup\":%ld,"
               "\"lost_warmup\":%ld", opt.measure_from, expected_warm, n_warm, lost_warm);
    print_ms("lat_p50_ms", pct(lat, n_lat, 0.50));
    print_ms("lat_p99_ms", pct(lat, n_lat, 0.99));
    print_ms("lat_max_ms", n_lat ? lat[n_lat - 1] : NAN);
    print_ms("ping_p50_ms", pct(pub_lat, n_pub_lat, 0.50));
    print_ms("ping_p99_ms", pct(pub_lat, n_pub_lat, 0.99));
    print_ms("send_lag_max_ms", max_send_lag);
    printf(",\"status_changes_pct\":%d,\"quiet_pings\":%ld,\"window_sub_bytes\":%ld,"
           "\"window_sub_events\":%ld", opt.status_changes, n_quiet, win_sub_bytes,
           win_sub_events);
    /* Which pings went missing (first 10): one ping lost everywhere, or scattered losses? */
    printf(",\"lost_by_ping\":{");
    for (int i = 0, shown = 0; i < opt.pings && shown < 10; i++)
        if (lost_by_ping[i]) printf("%s\"%d\":%d", shown++ ? "," : "", i, lost_by_ping[i]);
    printf("}");
    free(lost_by_ping);
    printf(",\"client_cpu_s\":%.3f}\n", cpu_run);
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr,
            "usage: sseload --host H --port P [--style heartbeat|nchan] [--prefix U]\n"
            "  --subs N --users U          N subscribers, subscriber j watches user j%%U\n"
            "  --pings P --ping-users K    ping i goes to user i%%K (K <= U)\n"
            "  --rate R --pub-conns C      R pings/s open loop on C connections (0: back-to-back)\n"
            "  --sub-timeout S --quiet S --deadline S   bounds, seconds\n"
            "  --contacts C --seed S       population: subscriber j is user j, its stream names\n"
            "                              C seeded contacts (needs subs = users = ping-users)\n"
            "  --measure-from M            only pings M.. count in latencies and losses\n"
            "  --max-pending N             at most N subscriber handshakes in flight\n"
            "  --source-addrs N            connect from 127.0.0.1..127.0.0.N\n"
            "  --status-changes PCT        quiet mode: streams with changes=only, PCT%% of\n"
            "                              pings change their user's status\n");
    exit(2);
}

static void parse_args(int argc, char **argv) {
    static struct option longopts[] = {
        {"host", 1, 0, 'h'},  {"port", 1, 0, 'p'},       {"style", 1, 0, 's'},
        {"prefix", 1, 0, 'x'}, {"subs", 1, 0, 'n'},      {"users", 1, 0, 'u'},
        {"pings", 1, 0, 'P'}, {"ping-users", 1, 0, 'K'}, {"rate", 1, 0, 'r'},
        {"pub-conns", 1, 0, 'c'}, {"sub-timeout", 1, 0, 't'}, {"quiet", 1, 0, 'q'},
        {"deadline", 1, 0, 'd'}, {"contacts", 1, 0, 'C'}, {"seed", 1, 0, 'S'},
        {"measure-from", 1, 0, 'M'}, {"max-pending", 1, 0, 'm'}, {"source-addrs", 1, 0, 'A'},
        {"status-changes", 1, 0, 'Z'}, {0, 0, 0, 0}};
    const char *host = NULL, *port = NULL;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': host = optarg; break;
        case 'p': port = optarg; break;
        case 's': opt.style = strcmp(optarg, "nchan") == 0 ? NCHAN : HEARTBEAT; break;
        case 'x': opt.prefix = optarg; break;
        case 'n': opt.subs = atoi(optarg); break;
        case 'u': opt.users = atoi(optarg); break;
        case 'P': opt.pings = atoi(optarg); break;
        case 'K': opt.ping_users = atoi(optarg); break;
        case 'r': opt.rate = atof(optarg); break;
        case 'c': opt.pub_conns = atoi(optarg); break;
        case 't': opt.sub_timeout = atof(optarg); break;
        case 'q': opt.quiet = atof(optarg); break;
        case 'd': opt.deadline = atof(optarg); break;
        case 'C': opt.contacts = atoi(optarg); break;
        case 'S': opt.seed = strtoul(optarg, NULL, 10); break;
        case 'M': opt.measure_from = atoi(optarg); break;
        case 'm': opt.max_pending = atoi(optarg); break;
        case 'A': opt.source_addrs = atoi(optarg); break;
        case 'Z': opt.status_changes = atoi(optarg); break;
        default: usage();
        }
    }
    if (!host || !port || opt.users < 1 || opt.ping_users < 1 || opt.ping_users > opt.users ||
        opt.pub_conns < 1 || opt.subs < 0 || opt.pings < 0 || opt.contacts < 0 ||
        (opt.contacts && (opt.subs != opt.users || opt.ping_users != opt.users ||
                          opt.contacts >= opt.users)) ||
        opt.measure_from < 0 || opt.max_pending < 0 || opt.source_addrs < 1 || opt.source_addrs > 254 ||
        opt.status_changes < 0 || opt.status_changes > 100 ||
        (opt.status_changes && (opt.style != HEARTBEAT || !opt.contacts)))
        usage();
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
    if (getaddrinfo(host, port, &hints, &opt.addr) != 0) usage();
    if (opt.source_addrs > 1 && (opt.addr->ai_family != AF_INET ||
        (ntohl(((struct sockaddr_in *)opt.addr->ai_addr)->sin_addr.s_addr) >> 24) != 127)) {
        fprintf(stderr, "sseload: --source-addrs needs an IPv4 loopback host\n");
        exit(2);
    }
    snprintf(opt.host, sizeof opt.host, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
}

/* Tell the harness when the measured pings' schedule starts and ends (open loop only). */
static void window_events(double t) {
    if (opt.measure_from <= 0 || opt.rate <= 0) return;
    if (win_state == 0 && t >= t_go + opt.measure_from / opt.rate) {
        win_cpu0 = cpu_seconds();
        printf("{\"event\":\"window_start\"}\n");
        fflush(stdout);
        win_state = 1;
    }
    if (win_state == 1 && t >= t_go + opt.pings / opt.rate) {
        printf("{\"event\":\"window_end\",\"client_cpu_s\":%.3f}\n", cpu_seconds() - win_cpu0);
        fflush(stdout);
        win_state = 2;
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    main_ep = epoll_create1(EPOLL_CLOEXEC);
    sub_ep = epoll_create1(EPOLL_CLOEXEC);
    timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (main_ep < 0 || sub_ep < 0 || timerfd < 0) die("epoll/timerfd");
    epoll_set(main_ep, EPOLL_CTL_ADD, 0, EPOLLIN, &opt.subs);
    epoll_set(main_ep, EPOLL_CTL_ADD, timerfd, EPOLLIN, &timerfd);
    epoll_set(main_ep, EPOLL_CTL_ADD, sub_ep, EPOLLIN, &sub_ep);

    subs = calloc(opt.subs ? opt.subs : 1, sizeof *subs);
    pubs = calloc(opt.pub_conns, sizeof *pubs);
    ping_ref = calloc(opt.pings + 1, sizeof *ping_ref);
    ping_state = calloc(opt.pings + 1, 1);
    ping_quiet = calloc(opt.pings + 1, 1);
    user_status = malloc((opt.ping_users + 1) * sizeof *user_status);
    for (int u = 0; u <= opt.ping_users; u++) user_status[u] = -1;
    /* Which pings repeat their user's status, drawn once (seeded): a user's first ping
     * (round 0) always changes it. */
    if (opt.status_changes) {
        uint64_t saved = rng_state;
        rng_state = opt.seed ^ 0x5157u;
        for (int i = opt.ping_users; i < opt.pings; i++)
            ping_quiet[i] = (int)(rng_next() % 100) >= opt.status_changes;
        rng_state = saved;
    }
    pub_lat = calloc(opt.pings + 1, sizeof *pub_lat);
    rounds = opt.pings / opt.ping_users + (opt.pings % opt.ping_users != 0);
    if (rounds < 1) rounds = 1;
    if (opt.contacts) make_contacts();
    /* a bit per (stream, ping it should see): subs x pings, or in population mode
     * subs x contacts x rounds; each stream sees at most rounds pings per user it names */
    size_t watched = opt.contacts ? (size_t)opt.contacts : 1;
    seen = calloc((opt.contacts ? (size_t)opt.subs * watched * rounds : (size_t)opt.subs * opt.pings)
                  / 8 + 1, 1);
    lat = calloc((size_t)opt.subs * watched * (opt.pings / opt.ping_users + 1) + 1, sizeof *lat);
    if (!subs || !pubs || !ping_ref || !ping_state || !pub_lat || !seen || !lat) die("calloc");

    /* Phase 1: the accept burst — every subscriber connects as fast as we can open
     * sockets; connects are interleaved with handling answers, as many clients would be. */
    double cpu0 = cpu_seconds(), t0 = now();
    for (int j = 0; j < opt.subs; j++) {
        while (opt.max_pending && j - n_sub_ok - n_sub_failed >= opt.max_pending &&
               now() - t0 < opt.sub_timeout)
            poll_once(5);
        struct conn *c = &subs[j];
        c->kind = SUB;
        c->idx = j;
        c->fd = open_socket();
        reset_response(c);
        sse_init(&c->sse);
        epoll_set(sub_ep, EPOLL_CTL_ADD, c->fd, EPOLLIN | EPOLLOUT, c);
        if (j % 64 == 63) poll_once(0);
    }
    while (n_sub_ok + n_sub_failed < opt.subs && now() - t0 < opt.sub_timeout)
        if (poll_once(50) == 's') break;
    for (int i = 0; i < opt.pub_conns; i++) pub_connect(&pubs[i], i);
    printf("{\"event\":\"subscribed\",\"subs_ok\":%ld,\"subs_failed\":%ld,"
           "\"subs_pending\":%ld,\"accept_s\":%.4f,\"client_cpu_s\":%.3f}\n",
           n_sub_ok, n_sub_failed, opt.subs - n_sub_ok - n_sub_failed, n_sub_ok ? t_last_accept - t0 : 0.0,
           cpu_seconds() - cpu0);
    fflush(stdout);

    /* Phase 2: hold the streams until told to go (publish) or stop. */
    int cmd = 0;
    double t_hold = now();
    while (cmd == 0 && now() - t_hold < opt.deadline) cmd = poll_once(100);
    if (cmd != 'g' || opt.pings == 0) return 0;

    /* Phase 3: publish and collect until everything arrived, quiet, or the deadline. */
    long expected = 0;  /* if every ping succeeds: each accepted subscriber of its user */
    for (int j = 0; j < opt.subs; j++) {
        if (!subs[j].headers_done) continue;
        if (opt.contacts) {
            for (int k = 0; k < opt.contacts; k++)
                for (int r = 0; r < rounds; r++) {
                    long seq = (long)r * opt.ping_users + contact(j, k);
                    expected += seq < opt.pings && !ping_quiet[seq];
                }
        } else if (j % opt.users < opt.ping_users) {
            expected += opt.pings / opt.ping_users + (j % opt.users < opt.pings % opt.ping_users);
        }
    }
    double cpu1 = cpu_seconds();
    t_go = now();
    pump();
    for (;;) {
        if (poll_once(20) == 's') break;  /* stdin closed: the harness is gone */
        double t = now();
        window_events(t);
        int all_answered = next_send == opt.pings;
        for (int i = 0; all_answered && i < opt.pub_conns; i++)
            if (pubs[i].inflight >= 0) all_answered = 0;
        if (all_answered) {
            double last = t_last_delivery > t_last_send ? t_last_delivery : t_last_send;
            if (n_delivered >= expected || t - last > opt.quiet) break;
        }
        if (t - t_go > opt.deadline) break;
    }
    window_events(INFINITY);  /* a run cut short still closes its window */
    report(cpu_seconds() - cpu1);
    return 0;
}
