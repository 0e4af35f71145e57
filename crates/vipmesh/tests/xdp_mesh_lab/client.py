# The external client of the XDP mesh lab.
#   who HOST PORT [SPORT]   tcp; prints the reply
#   uwho HOST PORT [SPORT]  udp; prints the reply
#   get HOST PORT WANT      GET until task WANT answers (new source ports); prints "task md5"
#   put HOST PORT WANT      PUT 4 MiB until task WANT answers; prints "task theirs ours"
import hashlib, socket, sys

cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
FAM = socket.AF_INET6 if ":" in host else socket.AF_INET
ANY = "::" if FAM == socket.AF_INET6 else "0.0.0.0"

def conn(sport=0):
    s = socket.socket(FAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.settimeout(10)
    s.bind((ANY, sport))
    s.connect((host, port))
    return s

def recv_all(s):
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b

if cmd == "who":
    s = conn(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    s.sendall(b"WHO\n")
    print(recv_all(s).decode().strip())
elif cmd == "uwho":
    s = socket.socket(FAM, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.bind((ANY, int(sys.argv[4]) if len(sys.argv) > 4 else 0))
    for _ in range(5):
        s.sendto(b"WHO", (host, port))
        try:
            print(s.recvfrom(2048)[0].decode().strip())
            break
        except socket.timeout:
            continue
elif cmd in ("get", "put"):
    want = sys.argv[4]
    data = bytes((i * 7) % 251 for i in range(4 * 1024 * 1024))
    for _ in range(40):
        s = conn()
        if cmd == "get":
            s.sendall(b"GET\n")
            r = recv_all(s)
            task, _, body = r.partition(b"\n")
            res = f"{task.decode()} {hashlib.md5(body).hexdigest()} {hashlib.md5(data).hexdigest()}"
        else:
            s.sendall(f"PUT {len(data)}\n".encode() + data)
            r = recv_all(s).decode().split()
            res = f"{r[0]} {r[1]} {hashlib.md5(data).hexdigest()}"
        s.close()
        if res.split()[0] == want:
            print(res)
            break
elif cmd == "hold":
    # hold HOST PORT SECONDS: one connection, a line every 50 ms; prints the tasks that
    # answered, how many replies came, and the first error.
    import time
    end = time.time() + float(sys.argv[4])
    s = conn()
    f = s.makefile("rb")
    s.sendall(b"HOLD\n")
    tasks, n, err = set(), 0, "none"
    try:
        tasks.add(f.readline().split()[0].decode())
        print(f"connected {','.join(tasks)}", flush=True)
        while time.time() < end:
            s.sendall(b"x\n")
            r = f.readline()
            if not r:
                err = "eof"
                break
            tasks.add(r.split()[0].decode())
            n += 1
            time.sleep(0.05)
    except Exception as e:
        err = type(e).__name__
    print(f"tasks={','.join(sorted(tasks))} replies={n} err={err}", flush=True)
