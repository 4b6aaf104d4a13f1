/*
 * make_vectors.c - writes the frames of the shared test vectors with the C encoder.
 *
 *     cc -std=c99 -Wall -Wextra -pedantic -O2 -o make_vectors make_vectors.c lungwatch_frame.c \
 *        lungwatch_seal.c -lsodium
 *     ./make_vectors < tests/firmware_bridge/vectors/vectors.txt
 *
 * Reads one vector per line (blank lines and '#' comments skipped; numbers decimal or 0x hex;
 * KEY and MODELHEX are hex, or '-' for none/empty):
 *
 *   audio     NAME DEVICE STREAM SEQ FIRST RATE FLAGS FORMAT COUNT SEED KEY
 *   status    NAME DEVICE STREAM SEQ FIRST RATE FLAGS BATTERY OFFBODY GAIN_CDB CLIPPED KEY
 *   heartbeat NAME DEVICE STREAM SEQ FIRST RATE FLAGS KEY
 *   info      NAME DEVICE STREAM SEQ FIRST RATE FLAGS MAJOR MINOR PATCH HWREV MODELHEX KEY
 *
 * Protocol v2: the same kinds with a "2" (audio2, status2, heartbeat2, info2) and one more
 * token, SESSION, before KEY (the device key, required); SEQ is then the 64-bit counter. The
 * frame is encoded without a key as v1, then sealed with lwf_seal().
 *
 * Three more line kinds check the hash functions on their own:
 *
 *   sha256    NAME DATAHEX          -> "NAME DIGESTHEX"
 *   hmac      NAME KEYHEX DATAHEX   -> "NAME MACHEX" (full 32 bytes)
 *   hkdf      NAME KEYHEX DEVICE STREAM SESSION -> "NAME SESSIONKEYHEX" (lwf_session_key)
 *
 * and prints "NAME HEXBYTES" per vector. Audio samples come from xorshift32 (13, 17, 5)
 * seeded with SEED: int16 = state >> 16, int24 = (state >> 8) sign-extended from 24 bits,
 * float32 = (int16 as above) / 32768. Exits 1 on a line it cannot use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lungwatch_frame.h"

#define MAX_TOKENS 16
#define MAX_KEY_BYTES 256

static uint32_t xorshift32(uint32_t *state) {
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

static int16_t as_int16(uint32_t x) { return (int16_t)(uint16_t)(x >> 16); }

static int32_t as_int24(uint32_t x) {
    int32_t v = (int32_t)((x >> 8) & 0xFFFFFFu);
    return v >= 0x800000 ? v - 0x1000000 : v;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* hex text (or "-") -> bytes; returns the length, or -1 if malformed or too long */
static long parse_hex(const char *text, uint8_t *out, size_t cap) {
    size_t n = strlen(text), i;
    if (strcmp(text, "-") == 0) return 0;
    if (n % 2 != 0 || n / 2 > cap) return -1;
    for (i = 0; i < n / 2; i++) {
        int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (uint8_t)(hi * 16 + lo);
    }
    return (long)(n / 2);
}

static unsigned long long number(const char *text) { return strtoull(text, NULL, 0); }

static size_t encode_audio(const lwf_header *h, char **tok, const uint8_t *key, size_t key_len,
                           uint8_t *out) {
    static int16_t i16[LWF_MAX_PAYLOAD_BYTES / 2];
    static int32_t i24[LWF_MAX_PAYLOAD_BYTES / 3];
    static float f32[LWF_MAX_PAYLOAD_BYTES / 4];
    unsigned format = (unsigned)number(tok[8]), i;
    unsigned long long count = number(tok[9]);
    uint32_t state = (uint32_t)number(tok[10]);
    if (count > LWF_MAX_PAYLOAD_BYTES / 2) return 0;
    for (i = 0; i < count; i++) {
        uint32_t x = xorshift32(&state);
        if (i < LWF_MAX_PAYLOAD_BYTES / 2) i16[i] = as_int16(x);
        if (i < LWF_MAX_PAYLOAD_BYTES / 3) i24[i] = as_int24(x);
        if (i < LWF_MAX_PAYLOAD_BYTES / 4) f32[i] = (float)as_int16(x) / 32768.0f;
    }
    if (format == LWF_INT16)
        return lwf_encode_audio_i16(h, i16, (uint16_t)count, key, key_len, out, LWF_MAX_FRAME_BYTES);
    if (format == LWF_INT24)
        return lwf_encode_audio_i24(h, i24, (uint16_t)count, key, key_len, out, LWF_MAX_FRAME_BYTES);
    if (format == LWF_FLOAT32)
        return lwf_encode_audio_f32(h, f32, (uint16_t)count, key, key_len, out, LWF_MAX_FRAME_BYTES);
    return 0;
}

/* sha256 / hmac lines: the digest into out (32 bytes); 0 if the line is malformed */
static size_t hash_line(char **tok, int n, uint8_t *out) {
    static uint8_t data[1024], key[MAX_KEY_BYTES];
    long data_len, key_len = 0;
    if (!strcmp(tok[0], "sha256") && n == 3) {
        lwf_sha256_ctx ctx;
        data_len = parse_hex(tok[2], data, sizeof data);
        if (data_len < 0) return 0;
        lwf_sha256_init(&ctx);
        lwf_sha256_update(&ctx, data, (size_t)data_len);
        lwf_sha256_final(&ctx, out);
        return 32;
    }
    if (!strcmp(tok[0], "hmac") && n == 4) {
        key_len = parse_hex(tok[2], key, sizeof key);
        data_len = parse_hex(tok[3], data, sizeof data);
        if (key_len < 0 || data_len < 0) return 0;
        lwf_hmac_sha256(key, (size_t)key_len, data, (size_t)data_len, out);
        return 32;
    }
    if (!strcmp(tok[0], "hkdf") && n == 6) {
        key_len = parse_hex(tok[2], key, sizeof key);
        if (key_len < 0) return 0;
        lwf_session_key(key, (size_t)key_len, (uint32_t)number(tok[3]), (uint16_t)number(tok[4]),
                        (uint32_t)number(tok[5]), out);
        return LWF_SESSION_KEY_BYTES;
    }
    return 0;
}

static size_t encode_v1(char **tok, int n, const uint8_t *key, size_t key_len, uint8_t *out);

/* A v1 or v2 line (see the top of the file); 0 if it cannot be encoded. */
static size_t encode_line(char **tok, int n, uint8_t *out) {
    static char kind[16];
    uint8_t key[MAX_KEY_BYTES];
    size_t len = strlen(tok[0]), size;
    long key_len;
    int v2 = len > 1 && len < sizeof kind && tok[0][len - 1] == '2';
    lwf_session s;
    if (!v2) {
        if (strcmp(tok[0], "audio") && strcmp(tok[0], "status") && strcmp(tok[0], "heartbeat") &&
            strcmp(tok[0], "info"))
            return hash_line(tok, n, out);
        key_len = parse_hex(tok[n - 1], key, sizeof key);
        return key_len < 0 ? 0 : encode_v1(tok, n, key, (size_t)key_len, out);
    }
    memcpy(kind, tok[0], len - 1);
    kind[len - 1] = '\0';
    key_len = n >= 4 ? parse_hex(tok[n - 1], key, sizeof key) : -1;
    if (key_len < 0 || lwf_session_init(&s, key, (size_t)key_len, (uint32_t)number(tok[2]),
                                        (uint16_t)number(tok[3]), (uint32_t)number(tok[n - 2])))
        return 0;
    tok[0] = kind;
    {
        char *counter = tok[4], *zero = "0";
        tok[4] = zero; /* the v1 sequence: the session replaces it */
        size = encode_v1(tok, n - 1, NULL, 0, out);
        return size ? lwf_seal(&s, (uint64_t)number(counter), out, size, LWF_MAX_FRAME_BYTES) : 0;
    }
}

/* tok[0 .. n): a v1 line whose KEY token (tok[n - 1]) is already parsed into key. */
static size_t encode_v1(char **tok, int n, const uint8_t *key, size_t key_len, uint8_t *out) {
    char model[LWF_MAX_MODEL_BYTES + 1];
    long model_len;
    lwf_header h;
    int want = !strcmp(tok[0], "audio") ? 12 : !strcmp(tok[0], "status") ? 13
             : !strcmp(tok[0], "heartbeat") ? 9 : !strcmp(tok[0], "info") ? 14 : -1;
    if (n != want) return 0;
    h.device_id = (uint32_t)number(tok[2]);
    h.stream_id = (uint16_t)number(tok[3]);
    h.sequence = (uint32_t)number(tok[4]);
    h.first_sample = (uint64_t)number(tok[5]);
    h.sample_rate_hz = (uint32_t)number(tok[6]);
    h.flags = (uint8_t)number(tok[7]);
    if (!strcmp(tok[0], "audio")) return encode_audio(&h, tok, key, key_len, out);
    if (!strcmp(tok[0], "heartbeat"))
        return lwf_encode_heartbeat(&h, key, key_len, out, LWF_MAX_FRAME_BYTES);
    if (!strcmp(tok[0], "status")) {
        lwf_status s;
        s.battery_percent = (uint8_t)number(tok[8]);
        s.off_body = (int8_t)strtol(tok[9], NULL, 0);
        s.gain_cdb = (int16_t)strtol(tok[10], NULL, 0);
        s.clipped_samples = (uint32_t)number(tok[11]);
        return lwf_encode_status(&h, &s, key, key_len, out, LWF_MAX_FRAME_BYTES);
    }
    model_len = parse_hex(tok[12], (uint8_t *)model, LWF_MAX_MODEL_BYTES);
    if (model_len < 0) return 0;
    model[model_len] = '\0';
    {
        lwf_device_info info;
        info.firmware_major = (uint8_t)number(tok[8]);
        info.firmware_minor = (uint8_t)number(tok[9]);
        info.firmware_patch = (uint8_t)number(tok[10]);
        info.hardware_revision = (uint8_t)number(tok[11]);
        info.model = model;
        return lwf_encode_device_info(&h, &info, key, key_len, out, LWF_MAX_FRAME_BYTES);
    }
}

int main(void) {
    static char line[2048];
    static uint8_t frame[LWF_MAX_FRAME_BYTES];
    unsigned long line_no = 0;
    while (fgets(line, sizeof line, stdin) != NULL) {
        char *tok[MAX_TOKENS];
        int n = 0;
        size_t size, i;
        char *t = strtok(line, " \t\r\n");
        line_no++;
        while (t != NULL && n < MAX_TOKENS) {
            tok[n++] = t;
            t = strtok(NULL, " \t\r\n");
        }
        if (n == 0 || tok[0][0] == '#') continue;
        size = n >= 2 ? encode_line(tok, n, frame) : 0;
        if (size == 0) {
            fprintf(stderr, "make_vectors: line %lu: cannot encode this vector\n", line_no);
            return 1;
        }
        printf("%s ", tok[1]);
        for (i = 0; i < size; i++) printf("%02x", frame[i]);
        printf("\n");
    }
    return 0;
}
