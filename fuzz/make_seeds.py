#!/usr/bin/env python3
"""Writes the committed seed inputs of the fuzz targets (seeds/TARGET/): a few small,
valid or nearly valid examples of each input, from which libFuzzer mutates. The crash-*
seeds are inputs the fuzzer found (each with a regression test); they are not written here."""
import json
import math
import os
import struct

os.chdir(os.path.dirname(os.path.abspath(__file__)))


def w(target, name, data):
    os.makedirs(f"seeds/{target}", exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(f"seeds/{target}/{name}", "wb") as f:
        f.write(data)


# range_header: first byte odd -> file size = byte >> 1 (0xc9 -> 100), the rest is the value.
for i, v in enumerate(["bytes=0-99", "bytes=5-", "bytes=-10", "bytes=10-5", "bytes=0-0,5-6",
                       " bytes = 1 - 2 ", "bytes=200-"]):
    w("range_header", f"r{i}", bytes([0xC9]) + v.encode())
w("range_header", "big", struct.pack("<Q", 1 << 40) + b"bytes=1099511627775-")

for i, v in enumerate(["64MiB", "2GiB", "1048576", "512KiB", "30s", "500ms", "25m", "24h", "7d",
                       "0", "18446744073709551615G", "http://auth:8080",
                       "http://a:8080,http://b:9000", "http://[::1]:8080", "0.0.0.0:8080",
                       "[::]:80"]):
    w("config_values", f"c{i}", v)

events = [
    {"type": "PostCreated", "data": {"id": "p1", "title": "Hello"}},
    {"type": "CommentCreated",
     "data": {"id": "c1", "content": "hi", "postId": "p1", "status": "pending"}},
    {"type": "CommentModerated",
     "data": {"id": "c1", "postId": "p1", "status": "approved", "content": "hi"}},
    {"type": "CommentUpdated",
     "data": {"id": "c1", "status": "rejected", "postId": "p1", "content": "orange"}},
    {"type": "SomethingElse", "data": {"x": [1, 2, {"y": None}]}},
    {"title": "a post", "content": "\u200b"},
]
for i, e in enumerate(events):
    w("blog_event", f"e{i}", json.dumps(e))

# bus_headers: mode 0 = the embedded bus's stored headers (JSON);
# mode 1 = AMQP basic properties on the wire (flags, header table, message id), then the body.
w("bus_headers", "embedded", b"\x00" + json.dumps(
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x": "y"}).encode())


def shortstr(s):
    s = s.encode()
    return bytes([len(s)]) + s


def longstr(s):
    s = s.encode()
    return struct.pack(">I", len(s)) + s


entries = (shortstr("x-flotilla-attempt") + b"S" + longstr("3")
           + shortstr("x-delivery-count") + b"l" + struct.pack(">q", 2)
           + shortstr("x-flotilla-routing-key") + b"S" + longstr("video")
           + shortstr("traceparent") + b"S"
           + longstr("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
table = struct.pack(">I", len(entries)) + entries
props = struct.pack(">H", (1 << 13) | (1 << 7)) + table + shortstr("mp3-job-1")
w("bus_headers", "amqp", b"\x01" + props + json.dumps({"job_id": "j1"}).encode())

# media_probe: a tiny PCM WAV, and the first bytes of other containers.
frames = 64
data = b"".join(struct.pack("<hh", int(8000 * math.sin(i / 5)), int(8000 * math.sin(i / 7)))
                for i in range(frames))
wav = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt "
       + struct.pack("<IHHIIHH", 16, 1, 2, 44100, 44100 * 4, 4, 16)
       + b"data" + struct.pack("<I", len(data)) + data)
w("media_probe", "tone.wav", wav)
w("media_probe", "ogg", b"OggS\x00\x02" + bytes(20))
w("media_probe", "id3", b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + b"\xff\xfb\x90\x64" + bytes(60))
w("media_probe", "ftyp", struct.pack(">I", 24) + b"ftypisom" + bytes(12))
w("media_probe", "flac", b"fLaC\x00\x00\x00\x22" + bytes(34))

# jwt_verify: mode 0 = token text; 1 = claims under a good signature; 2 = header NUL claims.
claims = json.dumps({"sub": "u1", "username": "ada@example.com", "admin": True,
                     "iat": 1700000000, "exp": 4102444800, "iss": "flotilla-auth"})
w("jwt_verify", "text", b"\x00eyJhbGciOiJFZERTQSIsImtpZCI6ImsifQ.eyJzdWIiOiJ1MSJ9.AAAA")
w("jwt_verify", "claims", b"\x01" + claims.encode())
w("jwt_verify", "header", b"\x02" + b'{"alg":"EdDSA","kid":"nope","crit":["b64"]}' + b"\x00"
  + claims.encode())

# multipart_upload: mode 1 = the usual Content-Type; mode 0 = Content-Type line first.
file_part = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"clip.mp4\"\r\n"
             b"Content-Type: video/mp4\r\n\r\n\x00\x01\x02video bytes\r\n")
text_part = b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
w("multipart_upload", "one-file", b"\x01" + text_part + file_part + b"--XyZ--\r\n")
w("multipart_upload", "two-files", b"\x01" + file_part + file_part + b"--XyZ--\r\n")
w("multipart_upload", "header-line",
  b"\x00multipart/form-data; boundary=\"a b\"\n--a b\r\n"
  b"Content-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\r\nX\r\n--a b--\r\n")

# download_name: upload file names as clients send them.
for i, v in enumerate(["sample.mp4", "../a/été \"x\".webm", ".hidden", "a\r\nb.mp4", "clip",
                       "C:\\Users\\me\\voice memo.m4a", "\u202etxt.exe", "."]):
    w("download_name", f"n{i}", v)
