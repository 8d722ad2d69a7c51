from experiments.soft import main

main()
