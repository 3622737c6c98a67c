/* A C client for the edgemill agent's local fast path (docs/fastpath.md): one Predict with one float32
 * input read from a file, the outputs printed one per line as "NAME DTYPE DIMS: VALUES".
 *
 *   cc -O2 -o predict predict.c
 *   ./predict /run/edgemill/agent.sock.fast mlp features 1x64 input.f32
 *
 * Little-endian hosts only (the protocol is little-endian, and so is every edge CPU edgemill targets).
 * Exit status: 0 answered, 1 the agent refused (its status code and message on stderr), 2 usage or I/O.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum { PREDICT = 1, PREDICT_OK = 2, ERROR = 3 };

typedef struct { uint8_t *data; size_t len, cap; } buf_t;

static void put(buf_t *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2;
        b->data = realloc(b->data, b->cap);
        if (!b->data) { perror("realloc"); exit(2); }
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}
static void put_u8(buf_t *b, uint8_t v) { put(b, &v, 1); }
static void put_u16(buf_t *b, uint16_t v) { put(b, &v, 2); }
static void put_u64(buf_t *b, uint64_t v) { put(b, &v, 8); }
static void put_text(buf_t *b, const char *s) { put_u16(b, (uint16_t)strlen(s)); put(b, s, strlen(s)); }

static int read_exact(int fd, void *p, size_t n) {
    uint8_t *q = p;
    while (n) {
        ssize_t got = read(fd, q, n);
        if (got <= 0) return -1;
        q += got;
        n -= (size_t)got;
    }
    return 0;
}

/* A cursor over the answer's payload that refuses to read past its end. */
typedef struct { const uint8_t *p; size_t left; } cur_t;
static const uint8_t *take(cur_t *c, size_t n) {
    if (n > c->left) { fprintf(stderr, "truncated answer\n"); exit(2); }
    const uint8_t *out = c->p;
    c->p += n;
    c->left -= n;
    return out;
}
static uint64_t get(cur_t *c, size_t n) { uint64_t v = 0; memcpy(&v, take(c, n), n); return v; }

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s SOCKET MODEL INPUT_NAME DIMS(1x64) INPUT_FILE(float32)\n", argv[0]);
        return 2;
    }
    uint64_t dims[32];
    int ndim = 0;
    size_t count = 1;
    for (char *tok = strtok(argv[4], "x"); tok && ndim < 32; tok = strtok(NULL, "x")) {
        dims[ndim++] = strtoull(tok, NULL, 10);
        count *= dims[ndim - 1];
    }
    FILE *f = fopen(argv[5], "rb");
    if (!f) { perror(argv[5]); return 2; }
    float *values = malloc(count * sizeof(float));
    if (fread(values, sizeof(float), count, f) != count) { fprintf(stderr, "%s: short\n", argv[5]); return 2; }
    fclose(f);

    buf_t payload = {0};
    put_text(&payload, argv[2]);   /* model */
    put_u8(&payload, 0);           /* flags: no capture */
    put_text(&payload, "");        /* capture id */
    put_u16(&payload, 0);          /* all outputs */
    put_u16(&payload, 1);          /* one input */
    put_text(&payload, argv[3]);
    put_u8(&payload, 1);           /* FLOAT32 */
    put_u8(&payload, (uint8_t)ndim);
    for (int i = 0; i < ndim; i++) put_u64(&payload, dims[i]);
    put_u8(&payload, 0);           /* inline */
    put_u64(&payload, count * sizeof(float));
    put(&payload, values, count * sizeof(float));

    uint8_t header[16] = {'E', 'M', 'F', '1', PREDICT, 0, 0, 0, 1, 0, 0, 0};
    uint32_t length = (uint32_t)payload.len;
    memcpy(header + 12, &length, 4);

    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror(argv[1]); return 2; }
    if (write(fd, header, 16) != 16 || write(fd, payload.data, payload.len) != (ssize_t)payload.len) {
        perror("write");
        return 2;
    }

    uint8_t answer_header[16];
    if (read_exact(fd, answer_header, 16) != 0 || memcmp(answer_header, "EMF1", 4) != 0) {
        fprintf(stderr, "no answer\n");
        return 2;
    }
    uint32_t answer_length;
    memcpy(&answer_length, answer_header + 12, 4);
    uint8_t *answer = malloc(answer_length ? answer_length : 1);
    if (read_exact(fd, answer, answer_length) != 0) { fprintf(stderr, "truncated answer\n"); return 2; }
    close(fd);
    cur_t c = {answer, answer_length};

    if (answer_header[4] == ERROR) {
        unsigned code = (unsigned)get(&c, 2);
        uint32_t n = (uint32_t)get(&c, 4);
        fprintf(stderr, "status %u: %.*s\n", code, (int)n, (const char *)take(&c, n));
        return 1;
    }
    if (answer_header[4] != PREDICT_OK) { fprintf(stderr, "unexpected frame type %u\n", answer_header[4]); return 2; }
    uint16_t n = (uint16_t)get(&c, 2);
    printf("version %.*s\n", n, (const char *)take(&c, n));
    n = (uint16_t)get(&c, 2);
    take(&c, n);                                   /* capture id */
    uint64_t queue_us = get(&c, 8), compute_us = get(&c, 8), total_us = get(&c, 8);
    printf("timing %llu %llu %llu\n", (unsigned long long)queue_us, (unsigned long long)compute_us,
           (unsigned long long)total_us);
    uint16_t outputs = (uint16_t)get(&c, 2);
    for (unsigned o = 0; o < outputs; o++) {
        n = (uint16_t)get(&c, 2);
        printf("%.*s", n, (const char *)take(&c, n));
        uint8_t dtype = (uint8_t)get(&c, 1), rank = (uint8_t)get(&c, 1);
        printf(" %u ", dtype);
        size_t elements = 1;
        for (unsigned i = 0; i < rank; i++) {
            uint64_t d = get(&c, 8);
            elements *= d;
            printf(i ? "x%llu" : "%llu", (unsigned long long)d);
        }
        get(&c, 1);                                /* storage: inline */
        uint64_t bytes = get(&c, 8);
        const uint8_t *data = take(&c, bytes);
        printf(":");
        if (dtype == 1 && bytes == elements * 4) { /* FLOAT32; other types are printed as their byte count */
            for (size_t i = 0; i < elements; i++) {
                float v;
                memcpy(&v, data + 4 * i, 4);
                printf(" %.9g", v);
            }
        } else {
            printf(" (%llu bytes)", (unsigned long long)bytes);
        }
        printf("\n");
    }
    free(answer);
    free(payload.data);
    free(values);
    return 0;
}
