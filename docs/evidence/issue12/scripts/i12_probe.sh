cd /tmp/i12_pub2
for args in "--inner-lr 0.1" "--inner-lr 0.4" "--inner-lr 1.0" "--inner-lr 0.1 --inner-steps 20" "--inner-lr 0.1 --meta-batch 4"; do
  tag=$(echo $args | tr -d ' -')
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD python -m fobbench train mnist1d --method fomaml --inner-protocol published --iterations 100 --eval-every 50 $args --threads 1 --quiet --no-plot --out /tmp/i12_probe_$tag.csv > /tmp/i12_probe_$tag.log 2>&1
done
