/*
 * lungwatch_frame.h - reference encoder of the lungwatch stethoscope wire protocol, v1 and v2.
 *
 * C99, no malloc, no global mutable state: every function writes into a buffer the caller
 * owns (uint8_t frame[LWF_MAX_FRAME_BYTES] is always large enough). Integers go out
 * little-endian whatever the host's byte order. The protocol is specified in
 * docs/firmware-protocol.md; firmware_bridge/protocol.py is the Python twin, and the tests
 * check both byte for byte on tests/firmware_bridge/vectors/.
 *
 * v1: header (32 bytes) | payload    | tag (16 bytes, only with a key) | CRC-32C (4 bytes).
 * v2: header (40 bytes) | ciphertext | Poly1305 tag (16 bytes)        | CRC-32C (4 bytes).
 *
 * Version 2 (encrypted, replay-protected; what a bridge accepts by default) is a sealed v1
 * frame: encode it without a key, then lwf_seal() rewrites it in place (lungwatch_seal.c,
 * which needs libsodium: cc ... lungwatch_frame.c lungwatch_seal.c -lsodium). Typical use on a
 * device (one frame per 256 samples at 8 kHz; `boot` is a counter in flash, raised and written
 * back before the first frame of every session):
 *
 *     static uint8_t frame[LWF_MAX_FRAME_BYTES];
 *     static lwf_session s;
 *     lwf_session_init(&s, DEVICE_KEY, 32, device_id, 0, boot);     // once per session
 *     lwf_header h = {LWF_FLAG_STREAM_START, device_id, 0, 0, first_sample, 8000};
 *     size_t n = lwf_encode_audio_i16(&h, samples, 256, NULL, 0, frame, sizeof frame);
 *     n = n ? lwf_seal(&s, counter++, frame, n, sizeof frame) : 0;  // counter from 0
 *     if (n) uart_write(frame, n);      // n == 0: an argument was out of range
 *
 * A v1 frame is sent as encoded (with a key: the HMAC tag); a bridge takes it only when its
 * configuration allows version 1.
 */
#ifndef LUNGWATCH_FRAME_H
#define LUNGWATCH_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LWF_VERSION 1u
#define LWF_MAGIC0 0x4Cu /* 'L' */
#define LWF_MAGIC1 0x57u /* 'W' */
#define LWF_HEADER_BYTES 32u
#define LWF_TAG_BYTES 16u
#define LWF_CRC_BYTES 4u
#define LWF_MAX_FRAME_BYTES 1472u /* one unfragmented UDP datagram on a 1500-byte MTU */
#define LWF_MAX_PAYLOAD_BYTES (LWF_MAX_FRAME_BYTES - LWF_HEADER_BYTES - LWF_TAG_BYTES - LWF_CRC_BYTES)
#define LWF_VERSION_2 2u
#define LWF_V2_HEADER_BYTES 40u /* the v1 fields (sequence -> session) + the 64-bit counter */
#define LWF_V2_MAX_PAYLOAD_BYTES \
    (LWF_MAX_FRAME_BYTES - LWF_V2_HEADER_BYTES - LWF_TAG_BYTES - LWF_CRC_BYTES) /* 1412 */
#define LWF_SESSION_KEY_BYTES 32u
#define LWF_MIN_DEVICE_KEY_BYTES 16u
#define LWF_MAX_SAMPLE_RATE_HZ 384000u
#define LWF_MAX_MODEL_BYTES 60u
#define LWF_BATTERY_UNKNOWN 0xFFu

/* flags */
#define LWF_FLAG_AUTH 0x01u         /* set by the encoder when a key is given */
#define LWF_FLAG_STREAM_START 0x02u /* first frame after the device (re)started the stream */

enum lwf_frame_type { LWF_AUDIO = 1, LWF_HEARTBEAT = 2, LWF_DEVICE_INFO = 3, LWF_STATUS = 4 };
enum lwf_sample_format { LWF_FORMAT_NONE = 0, LWF_INT16 = 1, LWF_INT24 = 2, LWF_FLOAT32 = 3 };

/* The fields a caller chooses for each frame (the encode_* function sets the frame type,
 * sample format, sample count and payload length). */
typedef struct {
    uint8_t flags;           /* LWF_FLAG_STREAM_START or 0 */
    uint32_t device_id;
    uint16_t stream_id;
    uint32_t sequence;       /* +1 for every frame of the stream, any type; wraps */
    uint64_t first_sample;   /* audio: index of the first sample; else the next sample's */
    uint32_t sample_rate_hz; /* nominal rate, 1 .. LWF_MAX_SAMPLE_RATE_HZ */
} lwf_header;

typedef struct {
    uint8_t battery_percent; /* 0..100, or LWF_BATTERY_UNKNOWN */
    int8_t off_body;         /* 1 off body, 0 on body, -1 no contact sensor */
    int16_t gain_cdb;        /* microphone gain, hundredths of a dB */
    uint32_t clipped_samples;/* cumulative since the stream started */
} lwf_status;

typedef struct {
    uint8_t firmware_major, firmware_minor, firmware_patch, hardware_revision;
    const char *model; /* UTF-8, at most LWF_MAX_MODEL_BYTES bytes, NUL-terminated */
} lwf_device_info;

/*
 * Encoders. Each returns the frame length written to out[0..n), or 0 when an argument is
 * out of range or out_cap is too small (out's contents are then unspecified).
 * key == NULL (or key_len == 0): no tag. With a key,
 * the tag is HMAC-SHA256(key, header || payload) truncated to 16 bytes.
 */
size_t lwf_encode_audio_i16(const lwf_header *h, const int16_t *samples, uint16_t count,
                            const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap);
/* 24-bit samples in int32_t, range [-2^23, 2^23) */
size_t lwf_encode_audio_i24(const lwf_header *h, const int32_t *samples, uint16_t count,
                            const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap);
size_t lwf_encode_audio_f32(const lwf_header *h, const float *samples, uint16_t count,
                            const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap);
size_t lwf_encode_status(const lwf_header *h, const lwf_status *status, const uint8_t *key,
                         size_t key_len, uint8_t *out, size_t out_cap);
size_t lwf_encode_heartbeat(const lwf_header *h, const uint8_t *key, size_t key_len,
                            uint8_t *out, size_t out_cap);
size_t lwf_encode_device_info(const lwf_header *h, const lwf_device_info *info,
                              const uint8_t *key, size_t key_len, uint8_t *out, size_t out_cap);

/* Building blocks, exposed for tests and for firmware that already has them in hardware. */
/* CRC-32C (Castagnoli): lwf_crc32c(0, data, n); continue with the previous result. */
uint32_t lwf_crc32c(uint32_t crc, const uint8_t *data, size_t len);

typedef struct {
    uint32_t state[8];
    uint64_t total_bytes;
    uint8_t block[64];
    size_t used;
} lwf_sha256_ctx;

void lwf_sha256_init(lwf_sha256_ctx *ctx);
void lwf_sha256_update(lwf_sha256_ctx *ctx, const uint8_t *data, size_t len);
void lwf_sha256_final(lwf_sha256_ctx *ctx, uint8_t digest[32]);
void lwf_hmac_sha256(const uint8_t *key, size_t key_len, const uint8_t *data, size_t len,
                     uint8_t mac[32]);

/*
 * Version 2. The session key of (device, stream, session): HKDF-SHA256 (RFC 5869) with salt
 * "lungwatch v2", IKM the device key, info "lungwatch v2 session key" || device_id (u32) ||
 * stream_id (u16) || session (u32), little-endian, 32 bytes. No libsodium needed.
 */
void lwf_session_key(const uint8_t *device_key, size_t key_len, uint32_t device_id,
                     uint16_t stream_id, uint32_t session, uint8_t out[LWF_SESSION_KEY_BYTES]);

/* A session: its key and ids (lungwatch_seal.c). */
typedef struct {
    uint8_t key[LWF_SESSION_KEY_BYTES];
    uint32_t device_id;
    uint16_t stream_id;
    uint32_t session;
} lwf_session;

/* Derive the session key (and initialise libsodium). Returns 0, or -1 when the device key is
 * shorter than LWF_MIN_DEVICE_KEY_BYTES or libsodium cannot start. */
int lwf_session_init(lwf_session *s, const uint8_t *device_key, size_t key_len,
                     uint32_t device_id, uint16_t stream_id, uint32_t session);

/* Rewrite frame[0..len), an untagged v1 frame of s's device and stream, in place as the v2
 * frame with this counter (+1 for every frame of the stream in the session, from 0; never
 * reused): version 2, FLAG_AUTH, the session in the sequence field, the counter after the v1
 * fields, the payload encrypted with ChaCha20-Poly1305 (IETF, key s->key, nonce session (u32)
 * || counter (u64), the 40-byte header as associated data), the tag, the CRC. Returns the v2
 * length, or 0 (frame unspecified) when the frame is not such a v1 frame, its payload exceeds
 * LWF_V2_MAX_PAYLOAD_BYTES or cap is too small. */
size_t lwf_seal(const lwf_session *s, uint64_t counter, uint8_t *frame, size_t len, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* LUNGWATCH_FRAME_H */
