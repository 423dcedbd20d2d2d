#!/usr/bin/env python3
"""Decomposes ping RTT under load into legs from the ping-probe router logs (see README.md)."""
import re,sys,statistics as st
d=sys.argv[1]; pre=sys.argv[2] if len(sys.argv)>2 else "weft"
ev={}
for node in (0,1):
    for line in open(f"{d}/{pre}{node}.log"):
        m=re.search(r"PROBE (\w+) type=(\d+) seq=(\d+) lane=(\d+) us=(-?\d+)",line)
        if not m: continue
        what,typ,seq,lane,us=m.groups()
        key={('tunread','8',0):'A',('open','8',1):'B',('tunread','0',1):'C',('open','0',0):'D'}.get((what,typ,node))
        if key: ev.setdefault(int(seq),{})[key]=int(us)
rows=[v for k,v in sorted(ev.items()) if len(v)==4]
# load pings: seq restarts per ping run; take all
def pct(xs,p): xs=sorted(xs); return xs[min(len(xs)-1,int(p/100*len(xs)))]
print("n",len(rows))
for name,f in [("A send->router0 tunread",lambda r:r['A']),("B-A router0..router1 open",lambda r:r['B']-r['A']),("C-B pod-b turnaround+node1 TUN ring",lambda r:r['C']-r['B']),("D-C router1..router0 open",lambda r:r['D']-r['C']),("D total to router0 open",lambda r:r['D'])]:
    xs=[f(r) for r in rows]
    print(f"{name:40s} p50 {pct(xs,50)/1000:7.2f} p90 {pct(xs,90)/1000:7.2f} p99 {pct(xs,99)/1000:7.2f} mean {st.mean(xs)/1000:7.2f} ms")
