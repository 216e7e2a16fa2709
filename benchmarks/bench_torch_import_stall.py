"""How long `import torch` in a background thread freezes the main thread (issue #13).

Each trial is a fresh interpreter: a thread imports torch, plainly or after
``napari_zup.devices.load_torch_libraries()``, while the main thread ticks every 5 ms (as
napari's event loop would); the longest gap between two ticks is the freeze a user would see.
Both ways alternate, so machine load hits them alike. Prints a Markdown table and the load.

    .venv/bin/python benchmarks/bench_torch_import_stall.py [--trials 5]
"""
import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, threading, time
how = sys.argv[1]

def work():
    if how == "preloaded":
        from napari_zup.devices import load_torch_libraries
        assert load_torch_libraries()
    import torch  # noqa: F401

t0 = time.perf_counter()
th = threading.Thread(target=work)
ticks = [t0]
th.start()
while th.is_alive():
    time.sleep(0.005)
    ticks.append(time.perf_counter())
gaps = sorted(b - a for a, b in zip(ticks, ticks[1:]))
print(json.dumps({"longest": gaps[-1], "second": gaps[-2], "total": ticks[-1] - t0}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res = {"plain": [], "preloaded": []}
    for _ in range(args.trials):
        for how in res:
            out = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True,
                                 text=True, check=True).stdout
            res[how].append(json.loads(out.strip().splitlines()[-1]))
    load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print("| import torch in a thread | longest main-thread gap (median, range) | second "
          "longest (median) | import time (median) |\n|---|---|---|---|")
    med = {}
    for how, rows in res.items():
        lg = sorted(r["longest"] for r in rows)
        sd = sorted(r["second"] for r in rows)
        tt = sorted(r["total"] for r in rows)
        m = len(rows) // 2
        med[how] = lg[m]
        print(f"| {how} | {lg[m]:.3f} s ({lg[0]:.3f}-{lg[-1]:.3f}) | {sd[m]:.3f} s | "
              f"{tt[m]:.2f} s |")
    print(f"\nratio preloaded / plain (longest gap, medians): "
          f"{med['preloaded'] / med['plain']:.2f}; {args.trials} trials each, alternating")
    print(f"load before: {load0}\nload after:  {load1}")


if __name__ == "__main__":
    main()
