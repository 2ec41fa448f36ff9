cd /tmp/i12_pub2
while pgrep -f i12_probe.sh > /dev/null; do sleep 5; done
for spec in "fomaml --inner-lr 3.0" "maml --inner-lr 1.0"; do
  tag=$(echo $spec | tr -d ' -')
  OMP_NUM_THREADS=1 PYTHONPATH=$PWD python -m fobbench train mnist1d --inner-protocol published --iterations 100 --eval-every 50 --method $spec --threads 1 --quiet --no-plot --out /tmp/i12_probe_$tag.csv > /tmp/i12_probe_$tag.log 2>&1
done
