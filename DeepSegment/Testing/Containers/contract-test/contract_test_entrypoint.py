"""Entry point of the contract test image: labels voxels above ``threshold`` as 1, or misbehaves.

``behaviour`` (a request parameter) picks what it does: ``ok``, ``fail`` (error result, exit 3),
``crash`` (exit 2, no result), ``malformed`` (result.json is not JSON), ``no-labels`` (result names a
missing file), ``shifted`` (label map on a moved grid), ``unknown-label`` (value 7), ``sleep`` (never
ends) or ``probe`` (reports what the container may do: user, network, writable paths, memory limit).
It reads and writes NRRD with SimpleITK, as a third-party image would.
"""

import json
import os
import socket
import sys
import time

import numpy as np
import SimpleITK as sitk


def write_result(document):
    document = {"contract": 1, **document}
    with open("/output/result.json", "w") as file:
        json.dump(document, file)


def can_write(path):
    try:
        with open(os.path.join(path, "probe"), "w") as file:
            file.write("x")
        os.remove(os.path.join(path, "probe"))
        return True
    except OSError:
        return False


def can_connect():
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        return True
    except OSError:
        return False


def memory_limit():
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        if os.path.exists(path):
            return open(path).read().strip()
    return "unknown"


def main():
    with open("/input/request.json") as file:
        request = json.load(file)
    parameters = request["parameters"]
    behaviour = parameters.get("behaviour", "ok")
    print("contract test image:", behaviour, flush=True)
    image = sitk.ReadImage(os.path.join("/input", request["inputs"][0]["file"]))
    labels = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > parameters["threshold"]).astype(np.uint8))
    labels.CopyInformation(image)
    messages = ["parameters " + json.dumps(parameters, sort_keys=True), "device " + request["device"]]
    if behaviour == "fail":
        print("the model refuses this volume", file=sys.stderr, flush=True)
        write_result({"status": "error", "messages": ["The model refuses this volume: too dark"]})
        return 3
    if behaviour == "crash":
        print("Segmentation fault in the model's native code", file=sys.stderr, flush=True)
        return 2
    if behaviour == "malformed":
        with open("/output/result.json", "w") as file:
            file.write("{not json")
        return 0
    if behaviour == "sleep":
        for step in range(100000):
            print(f"PROGRESS: {min(step / 100, 0.99):.2f} waiting", flush=True)
            time.sleep(0.1)
    if behaviour == "shifted":
        labels.SetOrigin([value + 1.0 for value in image.GetOrigin()])
    if behaviour == "unknown-label":
        labels = labels * 7
    if behaviour == "probe":
        interfaces = sorted(os.listdir("/sys/class/net"))
        messages += [f"uid {os.getuid()}", f"network {can_connect()}", f"interfaces {interfaces}",
                     f"writable input {can_write('/input')}", f"writable root {can_write('/')}",
                     f"writable output {can_write('/output')}", f"memory {memory_limit()}"]
    print("PROGRESS: 0.5 thresholding", flush=True)
    if behaviour != "no-labels":
        sitk.WriteImage(labels, "/output/labels.nrrd", True)
    print("PROGRESS: 1.0 done", flush=True)
    write_result({"status": "ok", "labelMap": "labels.nrrd", "labels": [{"value": 1, "name": "Bright"}],
                  "timings": {"thresholding": 0.01}, "messages": messages})
    return 0


if __name__ == "__main__":
    sys.exit(main())
