#!/usr/bin/env python3
"""Writes an OCI image layout (linux/amd64) whose layers are the given
directories, each tarred and gzip-compressed, tagged TAG:

    oci-layout.py OUT_DIR TAG DIR [DIR...]

A DIR is stored under its own path (`/usr/share/doc` as `usr/share/doc/...`);
`DIR=/` stores its contents at the layer's root (a whole rootfs).
For bench-pull.sh: skopeo copies it into a registry."""
import gzip, hashlib, io, json, os, sys, tarfile

out, tag, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def blob(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + d, "size": len(data)}


layers, diff_ids = [], []
for d in dirs:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        if d.endswith("=/"):
            t.add(d[:-2], arcname=".")
        else:
            t.add(d, arcname=d.lstrip("/"))
    raw = raw.getvalue()
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    desc = blob(gzip.compress(raw, compresslevel=6, mtime=0))
    desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
    layers.append(desc)
config = blob(json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": diff_ids},
}).encode())
config["mediaType"] = "application/vnd.oci.image.config.v1+json"
manifest = blob(json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": config, "layers": layers,
}).encode())
manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [manifest]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(sum(l["size"] for l in layers))
