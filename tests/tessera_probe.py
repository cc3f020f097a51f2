"""Runs tessera calls on one file in a process of its own, so a crash is seen by the caller as
a dead child, not a dead pytest.

    python3 tessera_probe.py '{"path": ..., "reads": [{"x": 0, "y": 0, "level": 0, "w": 256,
                               "h": 256, "channels": 3, "fill": 77, "save": "out.npy"}]}'

Prints one JSON object: {"open": {"status", "message"}, "level_count", "levels", "reads":
[{"status", "message", "buffer_is_fill", "saved"}]}. Reads run in order on the same handle.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tessera_ctypes as T  # noqa: E402


def main(arg):
    job = json.loads(arg)
    out = {"open": None, "reads": []}
    opts = T.open_options(**job["open_options"]) if job.get("open_options") else None
    st, msg, slide = T.open_status(job["path"], opts)
    out["open"] = {"status": st, "message": msg}
    if slide is not None:
        out["level_count"] = slide.level_count
        out["levels"] = [slide.level_info(i).as_dict() for i in range(slide.level_count)]
        out["vendor"] = slide.vendor
        for r in job.get("reads", []):
            ch = r.get("channels", 3)
            fill = r.get("fill", 77)
            w, h = r["w"], r["h"]
            buf = np.full(w * h * ch, 0x5A, np.uint8)
            st, msg = slide.read_into(buf, r["x"], r["y"], r.get("level", 0), w, h,
                                      channels=ch, fill=fill)
            img = buf.reshape(h, w, ch)
            res = {"status": st, "message": msg}
            if st != T.OK:
                f = fill if fill >= 0 else slide.background
                ok = bool((img[..., :3] == f).all())
                if ch == 4:
                    ok = ok and bool((img[..., 3] == 0).all())
                res["buffer_is_fill"] = ok
            elif r.get("save"):
                np.save(r["save"], img)
                res["saved"] = r["save"]
            out["reads"].append(res)
        slide.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
