/*
 * tls_sink: the TLS peer of bench/relay.py, in C so that it is never the
 * bottleneck of what the benchmark measures.
 *
 *   tls_sink server CERT KEY          listen on 127.0.0.1 (port chosen by the
 *                                     kernel, printed on stdout), serve forever
 *   tls_sink client PORT CAFILE BYTES [--no-ack]
 *                                     send BYTES in 16 KiB writes, print the
 *                                     seconds taken
 *
 * Protocol of one connection (client -> server): an 8-byte big-endian length
 * N, then N bytes. The server discards them, answers with the same 8-byte
 * length once it has read all N, sends close_notify and closes. A client that
 * sends N = 0 measures a connect plus one round trip.
 *
 * The server speaks TLS 1.3 with TLS_AES_256_GCM_SHA384 only, so every client
 * of the benchmark gets the same cipher. One thread per connection.
 *
 * --no-ack talks to a server that does not know this protocol (openssl
 * s_server): no length header; the client sends close_notify after the data
 * and the time runs until the server closes the connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (16 * 1024)
#define READ_BUF (256 * 1024)
#define IO_TIMEOUT_S 60

static void die(const char *what) {
    fprintf(stderr, "tls_sink: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(1);
}

/* Bounded blocking I/O, and no Nagle delay on the small answer. */
static void set_socket_options(int fd) {
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S, .tv_usec = 0};
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void put_be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (unsigned char)(v & 0xff);
}

static uint64_t get_be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}

/* Read exactly len bytes (len <= buffer size); 0 on success. */
static int read_exact(SSL *ssl, unsigned char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        int n = SSL_read(ssl, buf + got, (int)(len - got));
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    return 0;
}

static int write_all(SSL *ssl, const unsigned char *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        int n = SSL_write(ssl, buf + done, (int)(len - done));
        if (n <= 0) return -1;
        done += (size_t)n;
    }
    return 0;
}

/* ---- server ------------------------------------------------------------- */

struct conn {
    SSL_CTX *ctx;
    int fd;
};

static void serve_one(SSL_CTX *ctx, int fd) {
    unsigned char *buf = malloc(READ_BUF);
    SSL *ssl = SSL_new(ctx);
    if (buf == NULL || ssl == NULL) goto out;
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) != 1) goto out;
    unsigned char header[8];
    if (read_exact(ssl, header, sizeof header) != 0) goto out;
    uint64_t want = get_be64(header), got = 0;
    while (got < want) {
        uint64_t left = want - got;
        int n = SSL_read(ssl, buf, (int)(left < READ_BUF ? left : READ_BUF));
        if (n <= 0) goto out;
        got += (uint64_t)n;
    }
    put_be64(header, got);
    if (write_all(ssl, header, sizeof header) != 0) goto out;
    if (SSL_shutdown(ssl) == 0) {
        /* wait for the client's close_notify or its TCP end, then close */
        while (SSL_read(ssl, buf, READ_BUF) > 0) {
        }
    }
out:
    if (ssl != NULL) SSL_free(ssl);
    free(buf);
    close(fd);
}

static void *conn_thread(void *arg) {
    struct conn *c = arg;
    serve_one(c->ctx, c->fd);
    free(c);
    ERR_clear_error();
    return NULL;
}

static SSL_CTX *server_ctx(const char *cert, const char *key) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_256_GCM_SHA384") != 1) die("ciphersuites");
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die("certificate");
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die("private key");
    /* fewer, larger reads from the TCP socket */
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, READ_BUF);
    return ctx;
}

static int run_server(const char *cert, const char *key) {
    SSL_CTX *ctx = server_ctx(cert, key);
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0) die("bind");
    if (listen(lfd, 4096) != 0) die("listen");
    socklen_t alen = sizeof addr;
    if (getsockname(lfd, (struct sockaddr *)&addr, &alen) != 0) die("getsockname");
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) { /* until killed */
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE) continue;
            die("accept");
        }
        set_socket_options(fd);
        struct conn *c = malloc(sizeof *c);
        if (c == NULL) die("malloc");
        c->ctx = ctx;
        c->fd = fd;
        pthread_t tid;
        if (pthread_create(&tid, &attr, conn_thread, c) != 0) {
            close(fd);
            free(c);
        }
    }
    return 0;
}

/* ---- client: a stream with no Python in the way --------------------------- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int run_client(int port, const char *cafile, uint64_t total, int ack) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) die("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1) die("CA file");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    set_socket_options(fd);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) die("connect");
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    if (SSL_connect(ssl) != 1) die("handshake");
    static unsigned char chunk[CHUNK];
    memset(chunk, 0xa5, sizeof chunk);
    unsigned char header[8];
    double start = now();
    put_be64(header, total);
    if (ack && write_all(ssl, header, sizeof header) != 0) die("write");
    for (uint64_t sent = 0; sent < total;) {
        uint64_t left = total - sent;
        size_t n = left < CHUNK ? (size_t)left : CHUNK;
        if (write_all(ssl, chunk, n) != 0) die("write");
        sent += n;
    }
    if (!ack) {
        /* close_notify, then wait for the server to close its end */
        SSL_shutdown(ssl);
        while (SSL_read(ssl, chunk, sizeof chunk) > 0) {
        }
        printf("%.6f\n", now() - start);
        return 0;
    }
    if (read_exact(ssl, header, sizeof header) != 0) die("read ack");
    double elapsed = now() - start;
    if (get_be64(header) != total) {
        fprintf(stderr, "tls_sink: the server counted %llu bytes, not %llu\n",
                (unsigned long long)get_be64(header), (unsigned long long)total);
        return 1;
    }
    SSL_shutdown(ssl);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    printf("%.6f\n", elapsed);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && strcmp(argv[1], "server") == 0) return run_server(argv[2], argv[3]);
    int no_ack = argc == 6 && strcmp(argv[5], "--no-ack") == 0;
    if ((argc == 5 || no_ack) && strcmp(argv[1], "client") == 0)
        return run_client(atoi(argv[2]), argv[3], strtoull(argv[4], NULL, 10), !no_ack);
    fprintf(stderr, "usage: tls_sink server CERT KEY | "
                    "tls_sink client PORT CAFILE BYTES [--no-ack]\n");
    return 2;
}
