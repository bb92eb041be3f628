"""Helpers to cut items out of a Rust file by name (with their docs and attributes)."""
import re
class Src:
    def __init__(self, path):
        self.path=path
        self.lines=open(path).read().split('\n')
        self.taken=set()
    def find(self, pattern, indent=0, start=0):
        pre=' '*indent
        rx=re.compile('^'+re.escape(pre)+pattern)
        for i in range(start, len(self.lines)):
            if rx.match(self.lines[i]): return i
        raise KeyError(pattern)
    def item(self, pattern, indent=0, start=0):
        """Text of the item whose first line matches pattern at indent: docs/attrs above, through its end."""
        i=self.find(pattern, indent, start)
        pre=' '*indent
        a=i
        while a>0 and (self.lines[a-1].startswith(pre+'///') or self.lines[a-1].startswith(pre+'#[') or self.lines[a-1].startswith(pre+'//')) :
            a-=1
        # end: first line == pre+'}' or pre+'};' or pre+']' ; or a one-line item ending with ';'
        j=i
        if self.lines[i].rstrip().endswith(';'):
            j=i
        else:
            while not (self.lines[j] in (pre+'}', pre+'};', pre+'];') ):
                j+=1
        for k in range(a,j+1): self.taken.add(k)
        return '\n'.join(self.lines[a:j+1])
    def rest(self):
        return '\n'.join(l for k,l in enumerate(self.lines) if k not in self.taken)
