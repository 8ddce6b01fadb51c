"""Start-up time and memory of `wgslm train`: runs the command given, and when it prints its
"training ..." line (after the data is loaded and the model built) prints the seconds since launch and
the process's resident set (VmRSS) and peak (VmHWM), then stops it.

    python3 scripts/startup_rss.py wgslm train --config configs/tiny.toml --set data=\"DIR\" --device cpu
"""
import subprocess, sys, time, os
cmd = sys.argv[1:]
t0 = time.time()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
def mem(pid):
    d = {}
    for l in open(f"/proc/{pid}/status"):
        k, v = l.split(":", 1)
        if k in ("VmRSS", "VmHWM"): d[k] = int(v.split()[0]) // 1024
    return d
for line in p.stdout:
    if line.startswith("training "):
        t = time.time() - t0
        m = mem(p.pid)
        print(f"start-up {t:.2f} s; resident {m['VmRSS']} MiB, peak {m['VmHWM']} MiB; {line.strip()[:150]}")
        p.kill(); break
    else:
        print("  |", line.rstrip()[:200])
p.wait()
