import time
import cv2
from phos_dask import Settings, render
from phos_dask.film import ops
img = cv2.cvtColor(cv2.imread('../shared/parity/coffee_3000x2000.jpg'), cv2.COLOR_BGR2RGB)
big = cv2.resize(img, (6000, 4000), interpolation=cv2.INTER_CUBIC)
T = {}
for name in ['front','cells','blur_valid','compose','grain_rho','mix','mix_encode','any_above']:
    f = getattr(ops, name)
    def wrap(*a, _f=f, _n=name, **k):
        t = time.perf_counter(); r = _f(*a, **k); T[_n] = T.get(_n, 0) + time.perf_counter() - t; return r
    setattr(ops, name, wrap)
for film in ['Portra400', 'Portra400', 'Portra400', 'Cinestill800T', 'HP5Plus400']:
    T.clear()
    t = time.perf_counter(); out = render(big, Settings(film=film)); el = time.perf_counter() - t
    print(film, round(el, 3), {k: round(v, 3) for k, v in T.items()})
