"""The hostile programs of tests/test_sandbox_adversarial.py: (name, source, allowed statuses).

Placeholders, filled per program: {C} its canary file outside the sandbox, {H} the host dir holding the canaries,
a secret file and a unix socket, {R} a run dir (manifest with a secret), {P} the parent's cwd (the project),
{M} its unique marker name, {PID} the parent's pid, {VICTIM} a process outside with a secret in its env and argv,
{TOK} is never given to programs, {PORT} TCP/UDP listeners on the host's loopback, {ABS} an abstract unix socket,
{SOCK} a filesystem unix socket. A program that finds it could do what it should not prints ESCAPED.
"""

E = {"ok", "error"}
ANY = {"ok", "error", "timeout", "oom", "killed", "output_flood"}

_TRY = "def attempt(f):\n    try:\n        f()\n        print('ESCAPED')\n    except Exception as e:\n        print(type(e).__name__)\n"
# every process's /proc/<pid>/ENTRY (environ, cmdline) printed where readable
_SCAN_PROC = ("import os\nfor p in os.listdir('/proc'):\n    try:\n        print(open(f'/proc/{p}/ENTRY', 'rb').read())\n"
              "    except OSError:\n        pass")

PROGRAMS = [
    # ------------------------------------------------------------ delete / truncate / change a file outside
    ("os.remove canary", "import os; os.remove('{C}')", E),
    ("posix.unlink canary", "import posix; posix.unlink('{C}')", E),
    ("reload(os).remove canary", "import importlib, os; importlib.reload(os).remove('{C}')", E),
    ("ctypes unlink canary", "import ctypes\nassert ctypes.CDLL(None).unlink(b'{C}') == 0", E),
    ("ctypes syscall unlinkat", "import ctypes\nassert ctypes.CDLL(None).syscall(263, -100, b'{C}', 0) == 0", E),
    ("truncate by open(w)", "open('{C}', 'w').write('pwned')", E),
    ("os.truncate", "import os; os.truncate('{C}', 0)", E),
    ("rename canary", "import os; os.rename('{C}', '{C}.moved')", E),
    ("chmod canary", "import os; os.chmod('{C}', 0)", E),
    ("rmtree host dir", "import shutil; shutil.rmtree('{H}')", E),
    ("rm via subprocess", "import subprocess; subprocess.run(['rm', '-f', '{C}'], check=True)", E),
    ("os.system redirect", "import os\nassert os.system('echo pwned > {C}') == 0", E),
    ("shell writes host dir", "import subprocess; subprocess.run(['sh', '-c', 'echo x > {H}/{M}'], check=True)", E),
    ("os.open O_TRUNC", "import os; os.open('{C}', os.O_WRONLY | os.O_TRUNC)", E),
    ("utime canary", "import os; os.utime('{C}', (0, 0))", E),
    # ------------------------------------------------------------ write where a program must not
    ("write /tmp", "open('/tmp/{M}', 'w').write('x')", E),
    ("write /dev/shm", "open('/dev/shm/{M}', 'w').write('x')", E),
    ("write parent cwd", "open('{P}/{M}', 'w').write('x')", E),
    ("write run dir", "open('{R}/{M}', 'w').write('x')", E),
    ("overwrite run manifest", "open('{R}/manifest.json', 'w').write('{}')", E),
    ("write ~", "import os; open(os.path.expanduser('~/{M}'), 'w').write('x')", E),
    ("write /root", "open('/root/{M}', 'w').write('x')", E),
    ("write /etc", "open('/etc/{M}', 'w').write('x')", E),
    ("append /etc/passwd", "open('/etc/passwd', 'a').write('evil::0:0::/:/bin/sh\\n')", E),
    ("mkdir /var/tmp", "import os; os.makedirs('/var/tmp/{M}')", E),
    ("poison numpy on disk", "import numpy, os\nopen(os.path.join(os.path.dirname(numpy.__file__), '__init__.py'), 'a')"
     ".write('\\nraise SystemExit')", E),
    ("drop a .pth in site-packages", "import site\nopen(site.getsitepackages()[0] + '/{M}.pth', 'w').write('import os')", E),
    ("write through /proc/self/root", "open('/proc/self/root{H}/{M}', 'w').write('x')", E),
    ("write through /proc/1/root", "open('/proc/1/root{H}/{M}', 'w').write('x')", E),
    ("write through /proc/1/cwd", "open('/proc/1/cwd/{M}', 'w').write('x')", E),
    ("write the task dirs", "import os\nfor d in os.listdir('/sbx'):\n    open(f'/sbx/{d}/{M}', 'w')", E),
    # ------------------------------------------------------------ symlink and hardlink tricks
    ("symlink /etc then write", "import os; os.symlink('/etc', 'e'); open('e/{M}', 'w').write('x')", E),
    ("symlink to canary then write", "import os; os.symlink('{C}', 'l'); open('l', 'w').write('x')", E),
    ("symlink to passwd then append", "import os; os.symlink('/etc/passwd', 'p'); open('p', 'a').write('x')", E),
    ("hardlink passwd then append", "import os; os.link('/etc/passwd', 'h'); open('h', 'a').write('x')", E),
    ("hardlink canary", "import os; os.link('{C}', 'h'); open('h', 'w').write('x')", E),
    ("symlink race on cwd", "import os\nos.symlink('{H}', 'w')\nos.rename('w', 'x')\nopen('x/{M}', 'w')", E),
    # ------------------------------------------------------------ privileges and mounts
    ("chroot", "import os; os.mkdir('j'); os.chroot('j')", E),
    ("remount / rw", "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n"
     "assert l.mount(None, b'/', None, 32 | 4096, None) == 0\nopen('/etc/{M}', 'w')", E),
    ("umount /tmp to see the host's", "import ctypes, os\nassert ctypes.CDLL(None).umount2(b'/tmp', 2) == 0\n"
     "open('/tmp/{M}', 'w')", E),
    ("umount /sbx cover", "import ctypes\nassert ctypes.CDLL(None).umount2(b'/sbx', 2) == 0", E),
    ("new user ns then remount rw", "import ctypes\nl = ctypes.CDLL(None, use_errno=True)\n"
     "assert l.unshare(0x10000000 | 0x20000) == 0\nassert l.mount(None, b'/etc', None, 32 | 4096, None) == 0\n"
     "open('/etc/{M}', 'w')", E),
    ("setuid binary su", "import subprocess\nr = subprocess.run(['su', '-c', 'touch /etc/{M}'], capture_output=True,"
     " timeout=2)\nassert r.returncode == 0", ANY),
    ("setuid(0)", "import os; os.setuid(0); open('/etc/{M}', 'w')", E),
    ("mknod a disk", "import os, stat; os.mknod('sda', stat.S_IFBLK | 0o600, os.makedev(8, 0)); open('sda', 'rb')", E),
    ("write /proc/sys", "open('/proc/sys/kernel/hostname', 'w').write('{M}')", E),
    ("write /sys", "open('/sys/kernel/mm/transparent_hugepage/enabled', 'w').write('never')", E),
    ("write the zygote's memory", "open('/proc/1/mem', 'wb')", E),
    ("ptrace the zygote", "import ctypes\nassert ctypes.CDLL(None).ptrace(16, 1, 0, 0) == 0", E),
    # ------------------------------------------------------------ reading what it must not
    ("read host secret", "print(open('{H}/secret.txt').read())", E),
    ("read run manifest", "print(open('{R}/manifest.json').read())", E),
    ("read the project", "print(open('{P}/pyproject.toml').read()[:200])", E),
    ("read /etc/shadow", "print(open('/etc/shadow').read())", E),
    ("scan /proc environ", _SCAN_PROC.replace("ENTRY", "environ"), E),
    ("scan /proc cmdline", _SCAN_PROC.replace("ENTRY", "cmdline"), E),
    ("parent environ by pid", "print(open('/proc/{PID}/environ', 'rb').read())", E),
    ("victim environ by pid", "print(open('/proc/{VICTIM}/environ', 'rb').read())", E),
    ("walk / for the secret", "import os\nfor d in ('/tmp', '/root', '/work', '/home', '{H}', '{R}'):\n"
     "    for root, dirs, files in os.walk(d):\n        for f in files:\n            try:\n"
     "                print(open(os.path.join(root, f), errors='ignore').read(4000))\n"
     "            except OSError:\n                pass", ANY),
    # ------------------------------------------------------------ signals and processes
    ("kill the parent", "import os; os.kill({PID}, 9)", E),
    ("kill the victim", "import os; os.kill({VICTIM}, 9)", E),
    ("kill(-1)", "import os; os.kill(-1, 9)", ANY),
    ("killpg the parent's group", "import os; os.killpg(os.getpgid({PID}), 9)", E),
    ("kill every pid in /proc", "import os\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n"
     "        try:\n            os.kill(int(p), 9)\n        except OSError:\n            pass", ANY),
    ("double-fork daemon", "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
     "        os.execvp('sleep', ['sleep', '300', '{M}'])\n    os._exit(0)\ntime.sleep(0.2)", E),
    ("popen new session", "import subprocess\nsubprocess.Popen(['sleep', '300', '{M}'], start_new_session=True)", E),
    ("nohup daemon", "import os, signal\nif os.fork() == 0:\n    signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
     "    os.execvp('sh', ['sh', '-c', 'sleep 300; echo {M}'])\n", E),
    ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
     {"timeout", "error", "killed"}),
    # ------------------------------------------------------------ network
    ("tcp to host listener", "import socket; socket.create_connection(('127.0.0.1', {PORT}), timeout=1)", E),
    ("udp to host listener", "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
     "s.sendto(b'{M}', ('127.0.0.1', {PORT}))", E),
    ("abstract unix socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('\\0{ABS}')", E),
    ("filesystem unix socket", "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect('{SOCK}')", E),
    ("internet", "import urllib.request; urllib.request.urlopen('http://1.1.1.1', timeout=1)", E),
    # ------------------------------------------------------------ floods
    ("memory flood", "x = bytearray(64 * 2**30)", {"oom"}),
    ("fd flood", "fs = [open('/dev/null') for _ in range(100000)]", {"error"}),
    ("stdout flood", "while True: print('x' * 10000)", {"output_flood"}),
    ("file flood", "open('big', 'wb').write(b'x' * (200 * 2**20))", {"output_flood", "error", "timeout"}),
    ("inode flood", "for i in range(10**6): open(f'f{i}', 'w').close()", {"timeout", "error", "ok"}),
    ("fill the scratch tmpfs", "import os\nfor i in range(40):\n    with open(f'b{i}', 'wb') as f:\n"
     "        f.write(os.urandom(2**20) * 60)", {"error", "timeout", "output_flood", "ok"}),
]

POISON = """
import builtins, os, sys
import numpy
numpy.sum = lambda *a, **k: 42
builtins.len = lambda x: 42
sys.modules['json'] = None
os.environ['LUTRA_POISON'] = '1'
for d in ('/tmp', '/dev/shm', '.'):
    try:
        open(os.path.join(d, 'poison'), 'w').write('x')
    except OSError:
        pass
try:
    os.chdir('/')
except OSError:
    pass
"""

DETECT = """
import builtins, os, sys
import numpy
bad = []
if numpy.sum([1, 2]) != 3: bad.append('numpy')
if len([1]) != 1: bad.append('builtins')
if sys.modules.get('json', 1) is None: bad.append('modules')
if 'LUTRA_POISON' in os.environ: bad.append('environ')
for d in ('/tmp', '/dev/shm', '.'):
    try:
        left = set(os.listdir(d))
    except PermissionError:  # Landlock alone: the host's /tmp is not ours to read
        continue
    # a venv in a clone under /tmp (CI's may be) is bound read-only into the program's /tmp: only its top dir
    root = os.path.realpath(d) + '/'
    venv = {p[len(root):].split('/')[0] for p in map(os.path.realpath, sys.path) if p.startswith(root)}
    if left - venv: bad.append(d)
if os.getcwd() != '/tmp' and not os.getcwd().endswith('/work'): bad.append('cwd')
print('POISONED', bad) if bad else print('CLEAN')
"""
