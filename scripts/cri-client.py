#!/usr/bin/env python3
"""scripts/cri-client.py: drives containerd's CRI plugin the way a kubelet
does, for the tests (no kubelet needed): RunPodSandbox (host network, so no
CNI), CreateContainer, StartContainer, ContainerStatus, ExecSync, the
container's CRI log, StopContainer, RemoveContainer, StopPodSandbox,
RemovePodSandbox; then prints one JSON report of what it saw.

The CRI v1 API's descriptor is read from the containerd binary itself
(which carries it, gzipped), so nothing but grpcio and protobuf from PyPI
is needed: no .proto file, no code generation.

  cri-client.py --socket SOCK --image IMG --logdir DIR [--handler tether] [--containerd PATH]
"""
import argparse, json, os, sys, time, uuid, zlib

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def cri_descriptor(binary):
    """The runtime.v1 FileDescriptorProto embedded in containerd."""
    data = open(binary, "rb").read()
    start = 0
    while True:
        i = data.find(b"\x1f\x8b\x08", start)
        if i < 0:
            raise SystemExit("no CRI v1 descriptor in %s" % binary)
        start = i + 1
        try:
            raw = zlib.decompressobj(31).decompress(data[i:i + (4 << 20)])
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
        except Exception:
            continue
        if fd.package == "runtime.v1" and any(s.name == "RuntimeService" for s in fd.service):
            del fd.dependency[:]  # gogoproto options only
            fd.ClearField("options")
            return fd


class CRI:
    def __init__(self, socket, binary):
        pool = descriptor_pool.DescriptorPool()
        fd = pool.Add(cri_descriptor(binary))
        self.m = lambda name: message_factory.GetMessageClass(pool.FindMessageTypeByName("runtime.v1." + name))
        self.channel = grpc.insecure_channel("unix://" + socket)
        self.services = {s.name: s for s in fd.services_by_name.values()}

    def call(self, service, method, **fields):
        m = self.services[service].methods_by_name[method]
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        stub = self.channel.unary_unary("/runtime.v1.%s/%s" % (service, method),
                                        request_serializer=req_cls.SerializeToString,
                                        response_deserializer=resp_cls.FromString)
        return stub(req_cls(**fields), timeout=60)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--logdir", required=True)
    p.add_argument("--handler", default="")
    p.add_argument("--containerd", default="/usr/bin/containerd")
    a = p.parse_args()
    c = CRI(a.socket, a.containerd)
    m = c.m
    report = {}
    rt = "RuntimeService"
    node = 2  # NamespaceMode NODE
    report["version"] = c.call(rt, "Version", version="v1").runtime_api_version
    ns_opts = m("NamespaceOption")(network=node)
    pod_cfg = m("PodSandboxConfig")(
        metadata=m("PodSandboxMetadata")(name="pod", namespace="default", uid=uuid.uuid4().hex, attempt=0),
        hostname="",  # the host's own UTS namespace comes with the host network
        log_directory=a.logdir,
        linux=m("LinuxPodSandboxConfig")(security_context=m("LinuxSandboxSecurityContext")(namespace_options=ns_opts)))
    pod = c.call(rt, "RunPodSandbox", config=pod_cfg, runtime_handler=a.handler).pod_sandbox_id
    report["pod"] = pod
    ccfg = m("ContainerConfig")(
        metadata=m("ContainerMetadata")(name="c1"), image=m("ImageSpec")(image=a.image),
        command=["sh", "-c"], args=["echo hello from cri; echo oops >&2; exec sleep 300"],
        envs=[m("KeyValue")(key="GREETING", value="hi")], log_path="c1/0.log",
        linux=m("LinuxContainerConfig")(security_context=m("LinuxContainerSecurityContext")(namespace_options=ns_opts)))
    cid = c.call(rt, "CreateContainer", pod_sandbox_id=pod, config=ccfg, sandbox_config=pod_cfg).container_id
    c.call(rt, "StartContainer", container_id=cid)
    st = c.call(rt, "ContainerStatus", container_id=cid).status
    report["running_state"] = st.state  # 1 RUNNING
    report["log_path"] = st.log_path
    r = c.call(rt, "ExecSync", container_id=cid, cmd=["sh", "-c", "echo $GREETING; exit 3"], timeout=10)
    report["exec"] = {"exit_code": r.exit_code, "stdout": r.stdout.decode(), "stderr": r.stderr.decode()}
    # The log has what the container printed (the shim writes it as it comes).
    deadline = time.time() + 10
    log = ""
    while time.time() < deadline and "oops" not in log:
        log = open(st.log_path).read() if os.path.exists(st.log_path) else ""
        time.sleep(0.05)
    report["log"] = log.splitlines()
    c.call(rt, "StopContainer", container_id=cid, timeout=2)
    st = c.call(rt, "ContainerStatus", container_id=cid).status
    report["stopped_state"] = st.state  # 2 EXITED
    report["exit_code"] = st.exit_code
    c.call(rt, "RemoveContainer", container_id=cid)
    c.call(rt, "StopPodSandbox", pod_sandbox_id=pod)
    c.call(rt, "RemovePodSandbox", pod_sandbox_id=pod)
    report["sandboxes_left"] = len(c.call(rt, "ListPodSandbox").items)
    json.dump(report, sys.stdout, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
