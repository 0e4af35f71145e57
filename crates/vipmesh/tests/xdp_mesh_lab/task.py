# A task of the XDP mesh lab: TCP and UDP servers that say who they are and who called.
#   WHO            -> "<task> <client ip>:<client port>"
#   GET            -> "<task>\n" + 4 MiB
#   PUT <n>        -> reads n bytes, "<task> <md5>"
#   HOLD           -> then one reply "<task> <client>" per line received, until EOF
import hashlib, socket, sys, threading

name, tport, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
DATA = bytes((i * 7) % 251 for i in range(4 * 1024 * 1024))

def peer(a):
    # "[v6]:port" for IPv6, "v4:port" for IPv4 (also when it came in v4-mapped).
    host = a[0][7:] if a[0].startswith("::ffff:") else a[0]
    return f"[{host}]:{a[1]}" if ":" in host else f"{host}:{a[1]}"

def serve(c, a):
    with c:
        f = c.makefile("rb")
        line = f.readline().strip()
        who = f"{name} {peer(a)}\n".encode()
        if line == b"WHO":
            c.sendall(who)
        elif line == b"GET":
            c.sendall(name.encode() + b"\n" + DATA)
        elif line.startswith(b"PUT"):
            got = f.read(int(line.split()[1]))
            c.sendall(f"{name} {hashlib.md5(got).hexdigest()}\n".encode())
        elif line == b"HOLD":
            c.sendall(who)
            for _ in f:
                c.sendall(who)

def udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", uport))
    while True:
        _, a = s.recvfrom(2048)
        s.sendto(f"{name} {peer(a)}\n".encode(), a)

threading.Thread(target=udp, daemon=True).start()
l = socket.socket(socket.AF_INET6)
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
l.bind(("::", tport))
l.listen(128)
while True:
    c, a = l.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
