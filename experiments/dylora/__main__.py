from experiments.dylora import main

main()
