/* The raw load generator: many websocket clients in one single-threaded epoll loop, speaking just
 * enough engine.io / Socket.IO to connect with a token, join a room, send messages with acks and
 * time the messages delivered to them. It parses only what it measures (the engine.io open, the
 * connect and join acks, message acks, the step and timestamp in a delivered body) and answers
 * pings, so one core carries far more deliveries than the official client can.
 *
 *   gcc -O2 -o rawgen benchmarks/rawgen.c && ./rawgen CONFIG
 *
 * CONFIG holds key=value lines: host, port, path, namespace, tokens (a file, one token a line),
 * clients, rooms, room (prefix: client i joins <room><i % rooms>), senders (message k is sent by
 * client k % senders to its room), pad_bytes, concurrency (handshakes in flight), server_pid,
 * clk_tck, timeout_s (hard limit for the whole process: exit code 2), busy_sockets and
 * read_interval_us (see poll_io: under load, reads are batched; 0 turns that off).
 *
 * Prints {"ready":...} once every client is connected and joined, then reads commands on stdin:
 *   step ID RATE SECONDS GRACE_S P99_LIMIT_MS  -> one JSON line with the step's figures
 *   quit                                       -> closes every socket and exits
 * A step sends RATE messages/s for SECONDS; its latency is measured at every recipient against
 * the send time in the body (one clock: sender and receivers are this process); the step's CPU
 * figures (this process, the server's from /proc) cover the sending phase, as loadgen.mjs does.
 * Deliveries of earlier steps (another ID in the body) are not counted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ACK_RING 1024
#define MAX_FRAME (16u << 20)

enum { S_TCP, S_UPGRADE, S_OPEN, S_CONNECT, S_JOIN, S_READY, S_DEAD };

typedef struct {
    int fd, state, room;
    char *in;
    size_t inlen, incap;
    char *out;
    size_t outlen, outcap;
    int want_out;
    unsigned ackid;
    double acksent[ACK_RING];
} client;

typedef struct {
    double *v;
    size_t n, cap;
} samples;

static char host[64] = "127.0.0.1", path[256] = "/socket.io/", ns[256] = "/", room_prefix[128] = "r";
static char tokens_path[1024];
static int port, nclients = 1, nrooms = 1, nsenders = 1, pad_bytes = 64, concurrency = 50;
static int server_pid, clk_tck = 100, timeout_s = 300;
/* When one poll round finds at least busy_sockets sockets readable, the next round waits
 * read_interval_us first, so that each read takes several frames: reads, not parsing, are what
 * a delivery costs here. An idle or lightly loaded generator reads at once (no added latency). */
static int busy_sockets = 8, read_interval_us = 0;
static char **tokens;
static int ntokens;
static client *clients;
static int *room_members;
static int epfd;
static char *pad;
static char nsprefix[300]; /* "/bench," or "" for the root namespace */

/* per step */
static long cur_step = -1;
static long long received, acked, ack_refused;
static samples lat, acklat;
static int ready_count, dead_count;

static void die(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    printf("{\"error\":\"");
    for (char *p = buf; *p; p++) {
        if (*p == '"' || *p == '\\') putchar('\\');
        putchar(*p < 32 ? ' ' : *p);
    }
    printf("\"}\n");
    fflush(stdout);
    exit(1);
}

static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "{\"error\":\"timed out\"}\n";
    ssize_t w = write(1, msg, sizeof msg - 1);
    (void)w;
    _exit(2);
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6 + u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static long long server_ticks(void) {
    if (!server_pid) return -1;
    char p[64], buf[2048];
    snprintf(p, sizeof p, "/proc/%d/stat", server_pid);
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *s = strrchr(buf, ')');
    if (!s) return -1;
    s += 2;
    /* fields after the name: state(0) ... utime(11) stime(12) */
    long long ut = 0, st = 0;
    for (int i = 0; i < 13 && s; i++) {
        if (i == 11) ut = atoll(s);
        if (i == 12) st = atoll(s);
        s = strchr(s, ' ');
        if (s) s++;
    }
    return ut + st;
}

static double runqueue_wait_s(int pid) {
    char p[64];
    if (pid) snprintf(p, sizeof p, "/proc/%d/schedstat", pid);
    else snprintf(p, sizeof p, "/proc/self/schedstat");
    FILE *f = fopen(p, "r");
    if (!f) return -1;
    unsigned long long run = 0, wait = 0;
    int ok = fscanf(f, "%llu %llu", &run, &wait);
    fclose(f);
    return ok == 2 ? wait / 1e9 : -1;
}

static void add(samples *s, double v) {
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = realloc(s->v, s->cap * sizeof(double));
        if (!s->v) die("out of memory");
    }
    s->v[s->n++] = v;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(samples *s, double q) {
    size_t i = (size_t)(q * s->n);
    if (i >= s->n) i = s->n - 1;
    return s->v[i];
}

static void print_summary(samples *s) {
    if (!s->n) {
        printf("{\"n\":0}");
        return;
    }
    qsort(s->v, s->n, sizeof(double), cmp_double);
    printf("{\"n\":%zu,\"p50_ms\":%.2f,\"p90_ms\":%.2f,\"p99_ms\":%.2f,\"max_ms\":%.2f}", s->n,
           pct(s, 0.5), pct(s, 0.9), pct(s, 0.99), s->v[s->n - 1]);
}

/* -- sockets ------------------------------------------------------------------------------- */

static void set_events(client *c) {
    struct epoll_event ev = {.events = EPOLLIN | (c->want_out ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void kill_client(client *c) {
    if (c->state == S_DEAD) return;
    if (c->state != S_READY) die("client %d closed during the handshake (state %d)", (int)(c - clients), c->state);
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_DEAD;
    dead_count++;
}

static void flush_out(client *c) {
    while (c->outlen) {
        ssize_t w = write(c->fd, c->out, c->outlen);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) break;
            kill_client(c);
            return;
        }
        memmove(c->out, c->out + w, c->outlen - w);
        c->outlen -= w;
    }
    int want = c->outlen > 0;
    if (want != c->want_out) {
        c->want_out = want;
        set_events(c);
    }
}

static void send_raw(client *c, const char *data, size_t n) {
    if (c->state == S_DEAD) return;
    if (c->outlen == 0) {
        ssize_t w = write(c->fd, data, n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                kill_client(c);
                return;
            }
            w = 0;
        }
        data += w;
        n -= w;
        if (!n) return;
    }
    if (c->outlen + n > c->outcap) {
        c->outcap = (c->outlen + n) * 2;
        c->out = realloc(c->out, c->outcap);
        if (!c->out) die("out of memory");
    }
    memcpy(c->out + c->outlen, data, n);
    c->outlen += n;
    if (!c->want_out) {
        c->want_out = 1;
        set_events(c);
    }
}

/* A masked client frame with the all-zero mask (valid: the payload goes as is). */
static void send_frame(client *c, int opcode, const char *payload, size_t n) {
    char stackbuf[4096];
    size_t total = n + 14;
    char *buf = total <= sizeof stackbuf ? stackbuf : malloc(total);
    size_t h = 0;
    buf[h++] = (char)(0x80 | opcode);
    if (n < 126) {
        buf[h++] = (char)(0x80 | n);
    } else if (n < 65536) {
        buf[h++] = (char)(0x80 | 126);
        buf[h++] = (char)(n >> 8);
        buf[h++] = (char)n;
    } else {
        buf[h++] = (char)(0x80 | 127);
        for (int i = 7; i >= 0; i--) buf[h++] = (char)((uint64_t)n >> (8 * i));
    }
    memset(buf + h, 0, 4);
    h += 4;
    memcpy(buf + h, payload, n);
    send_raw(c, buf, h + n);
    if (buf != stackbuf) free(buf);
}

static void send_text(client *c, const char *fmt, ...) {
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf) die("packet too long");
    send_frame(c, 1, buf, (size_t)n);
}

static int next_to_open;

static void open_next(void) {
    if (next_to_open >= nclients) return;
    client *c = &clients[next_to_open++];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) die("bad host %s (an IPv4 address)", host);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->state = S_TCP;
    c->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static int starts(const char *p, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(p, prefix, k) == 0;
}

static const char *find(const char *p, size_t n, const char *needle) {
    return memmem(p, n, needle, strlen(needle));
}

static void on_text(client *c, const char *p, size_t n) {
    char pre[400];
    if (n == 1 && p[0] == '2') { /* engine.io ping */
        send_frame(c, 1, "3", 1);
        return;
    }
    switch (c->state) {
    case S_OPEN:
        if (n && p[0] == '0') {
            const char *tok = tokens[(c - clients) % ntokens];
            send_text(c, "40%s{\"token\":\"%s\"}", nsprefix, tok);
            c->state = S_CONNECT;
        }
        return;
    case S_CONNECT:
        snprintf(pre, sizeof pre, "44%s", nsprefix);
        if (starts(p, n, pre)) die("connect refused: %.*s", (int)(n > 200 ? 200 : n), p);
        snprintf(pre, sizeof pre, "40%s", nsprefix);
        if (starts(p, n, pre)) {
            c->ackid = 1;
            send_text(c, "42%s1[\"join\",{\"room\":\"%s%d\"}]", nsprefix, room_prefix, c->room);
            c->state = S_JOIN;
        }
        return;
    case S_JOIN:
        snprintf(pre, sizeof pre, "43%s1[", nsprefix);
        if (starts(p, n, pre)) {
            if (!find(p, n, "\"ok\":true")) die("join refused: %.*s", (int)(n > 200 ? 200 : n), p);
            c->state = S_READY;
            room_members[c->room]++;
            ready_count++;
            open_next();
        }
        return;
    case S_READY:
        break;
    default:
        return;
    }
    size_t k = strlen(nsprefix);
    if (n < 2 + k || p[0] != '4') return;
    if (p[1] == '2') { /* an event: a delivered message? */
        const char *body = find(p, n, "\"body\":{");
        if (!body) return;
        size_t rest = n - (body - p);
        const char *s = find(body, rest, "\"s\":");
        const char *t = find(body, rest, "\"t\":");
        if (!s || !t) return;
        if (strtol(s + 4, NULL, 10) != cur_step) return; /* a straggler of an earlier step */
        received++;
        add(&lat, now_ms() - strtod(t + 4, NULL));
    } else if (p[1] == '3') { /* an ack */
        const char *q = p + 2 + k;
        unsigned id = (unsigned)strtoul(q, NULL, 10);
        if (id < 2) return;
        double sent_at = c->acksent[id % ACK_RING];
        if (find(p, n, "\"ok\":true")) {
            acked++;
            if (sent_at > 0) add(&acklat, now_ms() - sent_at);
        } else {
            ack_refused++;
        }
    }
}

/* Parse every complete frame in the input buffer. */
static void on_frames(client *c) {
    size_t at = 0;
    char *b = c->in;
    while (c->inlen - at >= 2) {
        unsigned char b0 = (unsigned char)b[at], b1 = (unsigned char)b[at + 1];
        int opcode = b0 & 0x0F;
        uint64_t n = b1 & 0x7F;
        size_t h = 2;
        if (n == 126) {
            if (c->inlen - at < 4) break;
            n = ((unsigned char)b[at + 2] << 8) | (unsigned char)b[at + 3];
            h = 4;
        } else if (n == 127) {
            if (c->inlen - at < 10) break;
            n = 0;
            for (int i = 0; i < 8; i++) n = (n << 8) | (unsigned char)b[at + 2 + i];
            h = 10;
        }
        if (b1 & 0x80) h += 4; /* servers do not mask; skip a mask if one is there */
        if (n > MAX_FRAME) die("frame of %llu bytes", (unsigned long long)n);
        if (c->inlen - at < h + n) break;
        const char *payload = b + at + h;
        if (opcode == 1) on_text(c, payload, n);
        else if (opcode == 9) send_frame(c, 10, payload, n);
        else if (opcode == 8) {
            kill_client(c);
            return;
        }
        at += h + n;
    }
    if (at) {
        memmove(b, b + at, c->inlen - at);
        c->inlen -= at;
    }
}

static void on_readable(client *c) {
    if (c->incap - c->inlen < 65536) {
        c->incap = c->incap * 2 + 65536;
        c->in = realloc(c->in, c->incap);
        if (!c->in) die("out of memory");
    }
    ssize_t r = read(c->fd, c->in + c->inlen, c->incap - c->inlen);
    if (r < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        kill_client(c);
        return;
    }
    if (r == 0) {
        kill_client(c);
        return;
    }
    c->inlen += r;
    if (c->state == S_UPGRADE) {
        char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
        if (!end) return;
        if (c->inlen < 12 || memcmp(c->in, "HTTP/1.1 101", 12) != 0)
            die("upgrade refused: %.*s", (int)(c->inlen > 80 ? 80 : c->inlen), c->in);
        size_t used = end + 4 - c->in;
        memmove(c->in, c->in + used, c->inlen - used);
        c->inlen -= used;
        c->state = S_OPEN;
    }
    on_frames(c);
}

static void on_writable(client *c) {
    if (c->state == S_TCP) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) die("connect: %s", strerror(err));
        c->state = S_UPGRADE;
        c->want_out = 0;
        set_events(c);
        char req[1024];
        int n = snprintf(req, sizeof req,
                         "GET %s?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s:%d\r\n"
                         "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n",
                         path, host, port);
        send_raw(c, req, (size_t)n);
        return;
    }
    flush_out(c);
}

static char line[4096];
static size_t linelen;
static int line_ready, stdin_closed;

static void on_stdin(void) {
    ssize_t r = read(0, line + linelen, sizeof line - 1 - linelen);
    if (r <= 0) { /* the driver went away: finish what was asked, then exit */
        epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
        stdin_closed = 1;
        return;
    }
    linelen += r;
    line[linelen] = 0;
    if (strchr(line, '\n')) line_ready = 1;
    else if (linelen >= sizeof line - 1) die("command too long");
}

/* One round of I/O: waits at most timeout_ms. */
static void poll_io(int timeout_ms) {
    struct epoll_event evs[512];
    static int busy;
    if (busy && read_interval_us > 0) {
        struct timespec nap = {0, read_interval_us * 1000L};
        nanosleep(&nap, NULL);
    }
    int n = epoll_wait(epfd, evs, 512, timeout_ms);
    busy = n >= busy_sockets;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr == NULL) {
            on_stdin();
            continue;
        }
        client *c = evs[i].data.ptr;
        if (c->state == S_DEAD) continue;
        if (evs[i].events & (EPOLLOUT | EPOLLERR)) on_writable(c);
        if (c->state == S_DEAD) continue;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
    }
}

/* -- a step --------------------------------------------------------------------------------- */

static void send_message(long long k) {
    client *c = &clients[k % nsenders];
    if (c->state != S_READY) return;
    unsigned id = ++c->ackid;
    double t = now_ms();
    c->acksent[id % ACK_RING] = t;
    send_text(c, "42%s%u[\"message\",{\"room\":\"%s%d\",\"body\":{\"s\":%ld,\"t\":%.3f,\"text\":\"%s\"}}]",
              nsprefix, id, room_prefix, c->room, cur_step, t, pad);
}

static void settle(long long expected, long long sent, int quiet_ms, double max_ms, int stop_at_expected) {
    double deadline = now_ms() + max_ms, last_change = now_ms();
    long long last = received + acked;
    while (now_ms() < deadline) {
        if (stop_at_expected && received >= expected && acked + ack_refused >= sent) break;
        poll_io(20);
        long long p = received + acked;
        if (p != last) {
            last = p;
            last_change = now_ms();
        } else if (now_ms() - last_change > quiet_ms) {
            break;
        }
    }
}

static void step(long id, double rate, double seconds, double grace_s, double p99_limit) {
    cur_step = id;
    received = acked = ack_refused = 0;
    lat.n = acklat.n = 0;
    double t0 = now_ms(), cpu0 = cpu_s();
    long long srv0 = server_ticks();
    double gw0 = runqueue_wait_s(0), sw0 = server_pid ? runqueue_wait_s(server_pid) : -1;
    long long total = llround(rate * seconds), sent = 0, expected = 0;
    while (sent < total && now_ms() - t0 < seconds * 1000 + 5000) {
        long long due = (long long)((now_ms() - t0) / 1000 * rate);
        if (due > total) due = total;
        for (; sent < due; sent++) {
            client *c = &clients[sent % nsenders];
            expected += room_members[c->room] - 1;
            send_message(sent);
        }
        poll_io(1);
    }
    double wall = (now_ms() - t0) / 1000, gen = cpu_s() - cpu0;
    long long srv1 = server_ticks();
    double gw1 = runqueue_wait_s(0), sw1 = server_pid ? runqueue_wait_s(server_pid) : -1;
    settle(expected, sent, 500, grace_s * 1000, 1);
    long long got = received, got_acks = acked;
    samples *l = &lat;
    qsort(l->v, l->n, sizeof(double), cmp_double);
    double p99 = l->n ? pct(l, 0.99) : INFINITY;
    double ratio = expected ? (double)got / expected : 0;
    printf("{\"rate\":%g,\"sent\":%lld,\"acked\":%lld,\"ack_errors\":{", rate, sent, got_acks);
    long long missing = sent - got_acks - ack_refused;
    int comma = 0;
    if (ack_refused) printf("\"refused\":%lld", ack_refused), comma = 1;
    if (missing > 0) printf("%s\"no_ack\":%lld", comma ? "," : "", missing);
    printf("},\"expected\":%lld,\"received\":%lld,\"delivery_ratio\":%.4f,\"deliveries_per_s\":%lld,",
           expected, got, ratio, wall > 0 ? llround(got / wall) : 0);
    printf("\"latency\":");
    print_summary(&lat);
    printf(",\"ack_latency\":");
    print_summary(&acklat);
    printf(",\"wall_s\":%.3f,\"generator_cpu_s\":%.3f,\"generator_cpu_frac\":%.3f", wall, gen, gen / wall);
    if (srv0 >= 0 && srv1 >= 0) {
        double s = (double)(srv1 - srv0) / clk_tck;
        printf(",\"server_cpu_s\":%.3f,\"server_cpu_frac\":%.3f", s, s / wall);
    }
    if (gw0 >= 0 && gw1 >= 0) printf(",\"generator_runqueue_wait_frac\":%.3f", (gw1 - gw0) / wall);
    if (sw0 >= 0 && sw1 >= 0) printf(",\"server_runqueue_wait_frac\":%.3f", (sw1 - sw0) / wall);
    printf(",\"dead_clients\":%d,\"pass\":%s}\n", dead_count,
           ratio >= 0.99 && p99 < p99_limit ? "true" : "false");
    fflush(stdout);
    /* Let a failing step's backlog drain before the next one starts. */
    settle(0, 0, 400, 8000, 0);
}

/* -- setup ---------------------------------------------------------------------------------- */

static void read_config(const char *file) {
    FILE *f = fopen(file, "r");
    if (!f) die("config %s: %s", file, strerror(errno));
    char buf[2048];
    while (fgets(buf, sizeof buf, f)) {
        buf[strcspn(buf, "\r\n")] = 0;
        char *eq = strchr(buf, '=');
        if (!eq) continue;
        *eq = 0;
        const char *k = buf, *v = eq + 1;
#define STR(name, var) if (!strcmp(k, name)) { snprintf(var, sizeof var, "%s", v); continue; }
#define INT(name, var) if (!strcmp(k, name)) { var = atoi(v); continue; }
        STR("host", host) STR("path", path) STR("namespace", ns) STR("room", room_prefix)
        STR("tokens", tokens_path) INT("port", port) INT("clients", nclients) INT("rooms", nrooms)
        INT("senders", nsenders) INT("pad_bytes", pad_bytes) INT("concurrency", concurrency)
        INT("server_pid", server_pid) INT("clk_tck", clk_tck) INT("timeout_s", timeout_s)
        INT("busy_sockets", busy_sockets) INT("read_interval_us", read_interval_us)
        die("unknown config key %s", k);
    }
    fclose(f);
    if (port <= 0 || nclients <= 0 || nrooms <= 0 || nsenders <= 0 || nsenders > nclients || pad_bytes < 0 ||
        pad_bytes > 4000 || concurrency <= 0)
        die("bad config");
}

static void read_tokens(void) {
    FILE *f = fopen(tokens_path, "r");
    if (!f) die("tokens %s: %s", tokens_path, strerror(errno));
    char buf[4096];
    int cap = 0;
    while (fgets(buf, sizeof buf, f)) {
        buf[strcspn(buf, "\r\n")] = 0;
        if (!*buf) continue;
        if (ntokens == cap) {
            cap = cap ? cap * 2 : 1024;
            tokens = realloc(tokens, cap * sizeof(char *));
        }
        tokens[ntokens++] = strdup(buf);
    }
    fclose(f);
    if (!ntokens) die("no tokens");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: rawgen CONFIG\n");
        return 64;
    }
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    signal(SIGPIPE, SIG_IGN);
    read_config(argv[1]);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)timeout_s);
    read_tokens();
    if (strcmp(ns, "/") != 0) snprintf(nsprefix, sizeof nsprefix, "%s,", ns);
    pad = malloc(pad_bytes + 1);
    memset(pad, 'x', pad_bytes);
    pad[pad_bytes] = 0;
    clients = calloc(nclients, sizeof(client));
    room_members = calloc(nrooms, sizeof(int));
    epfd = epoll_create1(0);
    for (int i = 0; i < nclients; i++) clients[i].room = i % nrooms;
    double t0 = now_ms(), cpu0 = cpu_s();
    for (int i = 0; i < concurrency; i++) open_next();
    double deadline = t0 + 120000;
    while (ready_count < nclients) {
        if (now_ms() > deadline) die("only %d of %d clients ready after 120 s", ready_count, nclients);
        poll_io(50);
    }
    double wall = (now_ms() - t0) / 1000;
    printf("{\"ready\":true,\"clients\":%d,\"connect_s\":%.3f,\"generator_cpu_s\":%.3f}\n", nclients, wall,
           cpu_s() - cpu0);
    fflush(stdout);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* commands, from now on */
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    for (;;) {
        if (!line_ready) {
            if (stdin_closed) break;
            poll_io(100);
            continue;
        }
        char *nl = strchr(line, '\n');
        *nl = 0;
        long id;
        double rate, seconds, grace, p99;
        if (!strcmp(line, "quit")) break;
        if (sscanf(line, "step %ld %lf %lf %lf %lf", &id, &rate, &seconds, &grace, &p99) == 5) {
            if (rate <= 0 || seconds <= 0 || seconds > 600 || grace < 0 || grace > 60) die("bad step: %s", line);
            step(id, rate, seconds, grace, p99);
        } else {
            die("unknown command: %s", line);
        }
        size_t used = nl + 1 - line;
        memmove(line, nl + 1, linelen - used);
        linelen -= used;
        line[linelen] = 0;
        line_ready = strchr(line, '\n') != NULL;
    }
    for (int i = 0; i < nclients; i++)
        if (clients[i].state != S_DEAD) close(clients[i].fd);
    return 0;
}
