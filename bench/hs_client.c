/*
 * hs_client: the TLS client of bench/handshakes.py, in C so that the client
 * costs as little of the machine as it can (openssl s_time spends several
 * times a server's CPU on each handshake; the benchmark measures both).
 *
 *   hs_client rate PORT SECONDS MAX INFLIGHT
 *       full TLS 1.3 handshakes against 127.0.0.1:PORT for SECONDS (or MAX
 *       handshakes, whichever comes first), INFLIGHT at a time; each one:
 *       connect, handshake (no session reuse, no certificate verification),
 *       close_notify, then read until the server closes (its session
 *       tickets, its close_notify, end of stream), close. Prints
 *       "HANDSHAKES SECONDS FAILURES".
 *
 *       `openssl s_time -new` closes at once instead, before the server
 *       has even written its session tickets, so the server's ticket write
 *       meets a reset. Waiting for the server's close keeps the connection
 *       alive until every server has done all of its work for it (for the
 *       ssa engine that includes handing the connection to the
 *       application), and ends every connection the same clean way.
 *   hs_client hold PORT N INFLIGHT
 *       complete N handshakes, INFLIGHT at a time, and keep every connection
 *       open and idle. Prints "ready N SECONDS" once all are done, then waits
 *       for end of file on stdin and exits (the kernel closes them all).
 *   hs_client probe PORT
 *       one handshake; prints what was negotiated: "VERSION CIPHER GROUP
 *       SIGNATURE-KEY-TYPE DIGEST KEY-BITS".
 *
 * TLS 1.3 only, TLS_AES_128_GCM_SHA256, key share X25519 (OpenSSL's default
 * first group), the server's certificate is parsed but not verified (as
 * s_time does without -verify). Non-blocking sockets under epoll. Every wait
 * is bounded: no progress for IO_TIMEOUT_S seconds ends the run with an error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_S 30
#define MAX_FAILURES 100

struct slot {
    int fd;
    SSL *ssl;
    unsigned events; /* what epoll waits for on fd, 0 = not registered */
    int closing;     /* handshake done, close_notify sent, reading to the end */
};

static SSL_CTX *ctx;
static int epfd;
static struct sockaddr_in server;
static long failures;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "hs_client: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(1);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void make_ctx(void) {
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") != 1) die("ciphersuites");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
}

static void watch(struct slot *s, unsigned events) {
    if (s->events == events) return;
    struct epoll_event ev = {.events = events, .data.ptr = s};
    int op = s->events == 0 ? EPOLL_CTL_ADD : (events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD);
    if (epoll_ctl(epfd, op, s->fd, &ev) != 0) die("epoll_ctl");
    s->events = events;
}

static void drop(struct slot *s) {
    watch(s, 0);
    SSL_free(s->ssl);
    close(s->fd);
    s->ssl = NULL;
    s->fd = -1;
}

static void start(struct slot *s) {
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (s->fd < 0) die("socket");
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (struct sockaddr *)&server, sizeof server) != 0 && errno != EINPROGRESS)
        die("connect");
    s->ssl = SSL_new(ctx);
    if (!s->ssl || SSL_set_fd(s->ssl, s->fd) != 1) die("SSL_new");
    SSL_set_connect_state(s->ssl);
    s->events = 0;
    s->closing = 0;
    watch(s, EPOLLOUT); /* the TCP connect completes first */
}

/* Drive one handshake: 1 done, 0 waiting, -1 failed (connection dropped). */
static int step(struct slot *s) {
    ERR_clear_error();
    int rc = SSL_do_handshake(s->ssl);
    if (rc == 1) return 1;
    switch (SSL_get_error(s->ssl, rc)) {
    case SSL_ERROR_WANT_READ: watch(s, EPOLLIN); return 0;
    case SSL_ERROR_WANT_WRITE: watch(s, EPOLLOUT); return 0;
    default:
        if (++failures <= 5) {
            fprintf(stderr, "hs_client: handshake failed: ");
            ERR_print_errors_fp(stderr);
            fprintf(stderr, "\n");
        }
        if (failures > MAX_FAILURES) {
            fprintf(stderr, "hs_client: more than %d failed handshakes, giving up\n",
                    MAX_FAILURES);
            exit(1);
        }
        drop(s);
        return -1;
    }
}

/* After close_notify: read until the server's close_notify or end of
 * stream (1), or wait for more (0). Whatever ends the stream ends it. */
static int drain(struct slot *s) {
    char buf[4096];
    for (;;) {
        ERR_clear_error();
        int rc = SSL_read(s->ssl, buf, sizeof buf);
        if (rc > 0) continue;
        int err = SSL_get_error(s->ssl, rc);
        if (err == SSL_ERROR_WANT_READ) {
            watch(s, EPOLLIN);
            return 0;
        }
        if (err == SSL_ERROR_WANT_WRITE) {
            watch(s, EPOLLOUT);
            return 0;
        }
        return 1;
    }
}

static int wait_events(struct epoll_event *evs, int n, double *last_progress) {
    int got = epoll_wait(epfd, evs, n, 1000);
    if (got < 0) {
        if (errno == EINTR) return 0;
        die("epoll_wait");
    }
    if (got == 0 && now() - *last_progress > IO_TIMEOUT_S) {
        fprintf(stderr, "hs_client: no progress for %d s\n", IO_TIMEOUT_S);
        exit(1);
    }
    return got;
}

static int run_rate(double seconds, long max, int inflight) {
    struct slot *slots = calloc((size_t)inflight, sizeof *slots);
    struct epoll_event *evs = calloc((size_t)inflight, sizeof *evs);
    if (!slots || !evs) die("calloc");
    long started = 0, done = 0;
    int active = 0;
    double t0 = now(), end = t0 + seconds, last = t0;
    for (int i = 0; i < inflight && started < max; i++, started++, active++) start(&slots[i]);
    while (active > 0) {
        int got = wait_events(evs, inflight, &last);
        for (int i = 0; i < got; i++) {
            struct slot *s = evs[i].data.ptr;
            if (s->closing) {
                if (!drain(s)) continue;
                drop(s);
            } else {
                int rc = step(s);
                if (rc == 0) continue;
                if (rc == 1) {
                    done++;
                    last = now();
                    SSL_shutdown(s->ssl); /* our close_notify */
                    s->closing = 1;
                    if (!drain(s)) continue;
                    drop(s);
                }
            }
            /* the slot is free: a connection ended (or failed) */
            last = now();
            if (started < max && last < end) {
                start(s);
                started++;
            } else {
                active--;
            }
        }
    }
    printf("%ld %.6f %ld\n", done, now() - t0, failures);
    return 0;
}

static int run_hold(long n, int inflight) {
    struct slot *slots = calloc((size_t)n, sizeof *slots);
    struct epoll_event *evs = calloc((size_t)inflight, sizeof *evs);
    if (!slots || !evs) die("calloc");
    long next = 0, done = 0;
    int active = 0;
    double t0 = now(), last = t0;
    for (; next < n && active < inflight; next++, active++) start(&slots[next]);
    while (done < n) {
        int got = wait_events(evs, inflight, &last);
        for (int i = 0; i < got; i++) {
            struct slot *s = evs[i].data.ptr;
            int rc = step(s);
            if (rc == 0) continue;
            last = now();
            if (rc == 1) {
                done++;
                watch(s, 0); /* idle from now on */
                active--;
            } else {
                start(s); /* retry in the same slot */
            }
            for (; next < n && active < inflight; next++, active++) start(&slots[next]);
        }
    }
    printf("ready %ld %.6f\n", done, now() - t0);
    fflush(stdout);
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    return 0;
}

static int run_probe(void) {
    struct slot s;
    struct epoll_event ev;
    double last = now();
    start(&s);
    int rc;
    while ((rc = step(&s)) == 0) wait_events(&ev, 1, &last);
    if (rc < 0) return 1;
    SSL *ssl = s.ssl;
    int sig_type = 0, digest = 0;
    SSL_get_peer_signature_type_nid(ssl, &sig_type);
    SSL_get_peer_signature_nid(ssl, &digest);
    X509 *cert = SSL_get1_peer_certificate(ssl);
    int bits = cert ? EVP_PKEY_get_bits(X509_get0_pubkey(cert)) : 0;
    const char *group = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl));
    printf("%s %s %s %s %s %d\n", SSL_get_version(ssl), SSL_get_cipher_name(ssl),
           group ? group : "?", OBJ_nid2sn(sig_type), OBJ_nid2sn(digest), bits);
    X509_free(cert);
    SSL_shutdown(ssl); /* then wait for the server's close, as in rate mode */
    s.closing = 1;
    while (!drain(&s)) wait_events(&ev, 1, &last);
    drop(&s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) goto usage;
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    make_ctx();
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (strcmp(argv[1], "rate") == 0 && argc == 6) {
        server.sin_port = htons((unsigned short)atoi(argv[2]));
        int inflight = atoi(argv[5]);
        if (inflight < 1) goto usage;
        return run_rate(atof(argv[3]), atol(argv[4]), inflight);
    }
    if (strcmp(argv[1], "hold") == 0 && argc == 5) {
        server.sin_port = htons((unsigned short)atoi(argv[2]));
        long n = atol(argv[3]);
        int inflight = atoi(argv[4]);
        if (n < 1 || inflight < 1) goto usage;
        return run_hold(n, inflight);
    }
    if (strcmp(argv[1], "probe") == 0 && argc == 3) {
        server.sin_port = htons((unsigned short)atoi(argv[2]));
        return run_probe();
    }
usage:
    fprintf(stderr, "usage: hs_client rate PORT SECONDS MAX INFLIGHT\n"
                    "       hs_client hold PORT N INFLIGHT\n"
                    "       hs_client probe PORT\n");
    return 2;
}
