function jspsh_octave_driver(job_path)
% JSPSH_OCTAVE_DRIVER  Run the JSPSH authors' MATLAB code under GNU Octave on one data
% file and write MAP / timings as JSON (plus the codes, for comparisons).
%
%   octave-cli --no-gui --eval "addpath('benchmarks'); jspsh_octave_driver('job.mat')"
%
% Written for benchmarks/jspsh_vs_octave.py, which writes the job file.  The authors'
% code (github.com/hutt94/JSPSH: train_JSPSH.m, rsign.m, NormalizeFea.m, mAP.m) is NOT
% part of this repository: job.authors_dir names a directory holding it (the Python side
% extracts it from a git mirror into a temporary directory).  Their files are used as
% they are, never edited.
%
% Job fields (a .mat file):
%   authors_dir  directory with the authors' .m files (added to the path)
%   data_path    .mat with I_tr, T_tr, L_tr (training set = database) and
%                I_te, T_te, L_te (queries)
%   out_dir      where results.json and codes_<bits>.mat are written
%   bits         row vector of code lengths r
%   mu alpha omega beta theta lambda iter sf anchors   hyper-parameters (their names)
%   km           row vector of k-means sizes (already capped at the number of distinct
%                label rows by the caller: Octave's kmeans cannot seed more clusters)
%   mode         'independent' or 'shared'
%   seed         RNG seed ('independent'): rand/randn state
%   repeats      (optional, default 1) times each training runs; the fastest is reported
%   shim_dir     (optional) directory with a randperm.m capping k at n, put first on the
%                path when n < their hard-coded anchor count
%   cluster_ids  [m, n] 1-based cluster ids (replaces their kmeans; required for
%                'shared', optional for 'independent')
%   For 'shared' only:
%   init_paths   cell of .mat paths, one per bits, each with H0 [n, K], sel_idx
%                [1, anchors] (1-based), YW0 [dY, K], pad_noise [iter, n, K] (Gaussian)
%   rank_rule    (optional) 'row_space' (default: differences (2) below) or 'authors':
%                the H step's rank and U are their lines 34-37 verbatim (svd(Z'*Z),
%                eigenvalues > 1e-6, U = Z * (V / sqrt(Lmd))); only the padding is (3)
%
% 'independent': everything as in the authors' main_demo.m / evaluate_JSPSH.m:
%   LSet from kmeans(LTrain, km(j), 'Distance', 'cosine') (octave-statistics), then
%   NormalizeFea of the five matrices, their train_JSPSH unchanged (it draws its own H0,
%   padding, anchors and YW0 from the seeded generators), rsign of the query
%   projections, DHamm = Bq * B', sort(DHamm, 2, 'descend') and their mAP (all / top 50).
%   param.db_name is 'MIRFLICKR' (1000 anchors) or 'NUS-WIDE' (5000): their sel_num is
%   hard-coded, so anchors must be one of those two.
%
% 'shared': the training loop is a copy written here (shared_train below), because their
%   train_JSPSH draws H0, the padding, the anchors and YW0 internally.  It calls their
%   rsign and follows train_JSPSH.m line by line EXCEPT:
%   (1) H starts from the given H0 (theirs: sqrt(n*nbits/kdim)*orth(rand(n,kdim)));
%   (2) H step, rank (rank_rule 'row_space'; with 'authors' their rule is used as is):
%       the kept directions are the row space of B, eigenvalues of B'*B
%       above K * eps * max (the solver's rule for float64; theirs: eigenvalues of Z'*Z above 1e-6, which on an
%       exactly rank-deficient Z keeps round-off directions (hundreds at 64 bits: see
%       docs/benchmarks.md), whose U columns have norm far below 1, and pads the rest);
%       U = polar factor of Z*Vk (SVD of Z*Vk; theirs Z*V/sqrt(Lmd), the same on the
%       kept directions);
%   (3) H step, padding: polar(G*Vd)*Vd' with G = the given pad_noise(t,:,:) and Vd the
%       dropped directions (theirs: orth(randn(n, kdim-rank)) * orth(VV(:,~index))',
%       which depends on the random draw and on the basis svd returns for the null
%       space; polar(G*Vd)*Vd' has the same distribution and depends on neither basis);
%   (4) anchors sel_idx and YW0 are given (theirs: randperm(n, sel_num), rand(dY, kdim)).
%   The B step (including the theta*n*nbits/kdim term), the hash-function updates,
%   NormalizeFea, rsign, the ranking and mAP are theirs.
%
% Output results.json: {mode, octave_version, results: [{bits, kdim, i2t_map, t2i_map,
%   i2t_map50, t2i_map50, h_ranks (shared), times: {...seconds}}]}.

  job = load(job_path);
  warning('off', 'all');
  pkg load statistics
  addpath(char(job.authors_dir));
  if isfield(job, 'shim_dir')
    % randperm(n, k) with k capped at n: n < their hard-coded 1000 anchors (see
    % benchmarks/jspsh_vs_octave.py); added last, so it comes first on the path.
    addpath(char(job.shim_dir));
  end
  data = load(char(job.data_path));
  mode = char(job.mode);
  out_dir = char(job.out_dir);
  bits_list = double(job.bits(:)');
  km = double(job.km(:)');

  t = tic;
  XTrain = NormalizeFea(double(data.I_tr), 1);
  YTrain = NormalizeFea(double(data.T_tr), 1);
  LTrain = double(data.L_tr);
  NLTrain = NormalizeFea(LTrain, 1);
  XTest = NormalizeFea(double(data.I_te), 1);
  YTest = NormalizeFea(double(data.T_te), 1);
  LTest = double(data.L_te);
  time_normalize = toc(t);
  n = size(LTrain, 1);

  param.mu = double(job.mu); param.alpha = double(job.alpha);
  param.omega = double(job.omega); param.beta = double(job.beta);
  param.theta = double(job.theta); param.lambda = double(job.lambda);
  param.iter = double(job.iter); param.sf = double(job.sf); param.km = km;
  rank_rule = 'row_space';
  if isfield(job, 'rank_rule')
    rank_rule = char(job.rank_rule);
  end
  if ~any(strcmp(rank_rule, {'row_space', 'authors'}))
    error('rank_rule must be row_space or authors, got %s', rank_rule);
  end
  if strcmp(mode, 'independent')
    rank_rule = 'authors';   % their train_JSPSH.m, unchanged
  end
  param.rank_rule = rank_rule;
  anchors = double(job.anchors);
  if anchors == 5000
    param.db_name = 'NUS-WIDE';
  else
    param.db_name = 'MIRFLICKR';
  end

  % Label clusterings (LSet{j} = one-hot [n, km(j)]), as in main_demo.m.
  repeats = 1;
  if isfield(job, 'repeats')
    repeats = double(job.repeats);
  end
  t = tic; c = cputime;
  LSet = cell(1, numel(km));
  if strcmp(mode, 'independent')
    rand('state', double(job.seed)); randn('state', double(job.seed));
    if anchors ~= 1000 && anchors ~= 5000
      error('independent mode: their train_JSPSH hard-codes 1000 (or 5000) anchors');
    end
    if isfield(job, 'cluster_ids')   % given clusters (benchmarks: --our_clusters)
      ids = double(job.cluster_ids);
      for j = 1:numel(km)
        LSet{j} = full(sparse(1:n, ids(j, :), 1, n, km(j)));
      end
    else
      for j = 1:numel(km)
        [a, ~] = kmeans(LTrain, km(j), 'Distance', 'cosine');
        LSet{j} = full(sparse(1:n, a, 1, n, km(j)));
      end
    end
  else
    ids = double(job.cluster_ids);
    for j = 1:numel(km)
      LSet{j} = full(sparse(1:n, ids(j, :), 1, n, km(j)));
    end
  end
  time_kmeans = toc(t); time_kmeans_cpu = cputime - c;

  results = {};
  for bi = 1:numel(bits_list)
    param.nbits = bits_list(bi);
    kdim = param.nbits / param.sf;
    times = struct('normalize', time_normalize, 'kmeans', time_kmeans, ...
                   'kmeans_cpu', time_kmeans_cpu);
    h_ranks = [];
    % Training is timed `repeats` times (the fastest run is reported, wall and CPU);
    % the codes and MAP are those of the first run.
    times.train = inf; times.train_cpu = inf; times.encode = inf;
    for rep = 1:repeats
      t = tic; c = cputime;
      if strcmp(mode, 'independent')
        [B_r, XW_r, YW_r] = train_JSPSH(XTrain, YTrain, LTrain, NLTrain, LSet, param);
      else
        init = load(char(job.init_paths{bi}));
        [B_r, XW_r, YW_r, ranks_r, t_codes, t_hash] = shared_train( ...
            XTrain, YTrain, NLTrain, LSet, param, init);
      end
      times.train = min(times.train, toc(t)); times.train_cpu = min(times.train_cpu, cputime - c);
      t = tic;
      Bx_r = rsign(XTest * XW_r, param.nbits, kdim);
      By_r = rsign(YTest * YW_r, param.nbits, kdim);
      times.encode = min(times.encode, toc(t));
      if rep == 1
        B = B_r; XW = XW_r; YW = YW_r; BxTest = Bx_r; ByTest = By_r;
        if strcmp(mode, 'shared')
          h_ranks = ranks_r; times.codes = t_codes; times.hash = t_hash;
        end
      end
    end

    t = tic;
    [~, orderH] = sort(BxTest * B', 2, 'descend');
    i2t = mAP(orderH', LTrain, LTest);
    i2t50 = mAP(orderH', LTrain, LTest, 50);
    [~, orderH] = sort(ByTest * B', 2, 'descend');
    t2i = mAP(orderH', LTrain, LTest);
    t2i50 = mAP(orderH', LTrain, LTest, 50);
    times.map = toc(t);

    printf('octave %s %d bits: i2t %.4f t2i %.4f (train %.2f s)\n', mode, param.nbits, ...
           i2t, t2i, times.train);
    B = uint8(B); BxTest = uint8(BxTest); ByTest = uint8(ByTest);
    save('-v7', fullfile(out_dir, sprintf('codes_%d.mat', param.nbits)), ...
         'B', 'XW', 'YW', 'BxTest', 'ByTest');
    results{end + 1} = struct('bits', param.nbits, 'kdim', kdim, 'i2t_map', i2t, ...
        't2i_map', t2i, 'i2t_map50', i2t50, 't2i_map50', t2i50, ...
        'h_ranks', h_ranks, 'times', times);
  end
  out = struct('mode', mode, 'rank_rule', rank_rule, 'octave_version', OCTAVE_VERSION, ...
               'results', {results});
  fid = fopen(fullfile(out_dir, 'results.json'), 'w');
  fputs(fid, jsonencode(out));
  fclose(fid);
end


function [B, XW, YW, h_ranks, time_codes, time_hash] = shared_train(XTrain, YTrain, ...
    NLTrain, LSet, param, init)
% The training loop of train_JSPSH.m with the given random parts; see the header for
% the four differences.  Uses their rsign.
  t = tic;
  nbits = param.nbits; kdim = param.nbits / param.sf;
  n = size(NLTrain, 1);
  scale = sqrt(n * nbits / kdim);
  weights = param.km / sum(param.km);
  H = double(init.H0);
  B = rsign(H, nbits, kdim);
  h_ranks = zeros(1, param.iter);
  for i = 1:param.iter
    Z = param.omega * B + nbits * (NLTrain * (NLTrain' * B) + param.alpha * cluster_product(LSet, weights, B));
    if strcmp(param.rank_rule, 'authors')
      % train_JSPSH.m lines 34-37 as they are (their names); padding as below.
      [~, Lmd, VV] = svd(Z' * Z);
      index = (diag(Lmd) > 1e-6);
      V = VV(:, index);
      U = Z * (V / (sqrt(Lmd(index, index))));
      keep = index; Vd = VV(:, ~index);
      P = U * V';
    else
      [VB, LB] = eig(B' * B);
      lam = diag(LB);
      keep = lam > kdim * eps * max(lam);
      Vk = VB(:, keep); Vd = VB(:, ~keep);
      [Uz, ~, Wz] = svd(Z * Vk, 'econ');
      P = (Uz * Wz') * Vk';
    end
    h_ranks(i) = sum(keep);
    if any(~keep)
      G = reshape(double(init.pad_noise(i, :, :)), n, kdim);
      [Ug, ~, Wg] = svd(G * Vd, 'econ');
      P = P + (Ug * Wg') * Vd';
    end
    H = scale * P;
    B = rsign(param.omega * H + nbits * (NLTrain * (NLTrain' * H) + param.alpha * cluster_product(LSet, weights, H)) ...
              + param.theta * n * nbits / kdim * ones(n, kdim), nbits, kdim);
  end
  time_codes = toc(t);

  t = tic;
  sel_idx = double(init.sel_idx(:)');
  Bs = B(sel_idx, :);
  YW = double(init.YW0);
  % W_X = (X'X + lambda I) \ (X'B + mu X'Y W_Y + beta r (X'NL) NL(sel)' Bs) / M, and
  % W_Y likewise with the new W_X (their lines 57-62, same order of operations).
  M = (1 + param.mu) * eye(kdim) + Bs' * Bs * param.beta;
  ridge_x = XTrain' * XTrain + param.lambda * eye(size(XTrain, 2));
  ridge_y = YTrain' * YTrain + param.lambda * eye(size(YTrain, 2));
  anchor_x = ((XTrain' * NLTrain) * NLTrain(sel_idx, :)') * Bs * param.beta * nbits;
  anchor_y = ((YTrain' * NLTrain) * NLTrain(sel_idx, :)') * Bs * param.beta * nbits;
  for i = 1:param.iter
    XW = ridge_x \ (XTrain' * B + param.mu * XTrain' * YTrain * YW + anchor_x) / M;
    YW = ridge_y \ (YTrain' * B + param.mu * YTrain' * XTrain * XW + anchor_y) / M;
  end
  time_hash = toc(t);
end


function out = cluster_product(LSet, weights, M)
% sum_j w_j LSet{j} (LSet{j}' M), as their BCluster.
  out = zeros(size(M));
  for j = 1:numel(LSet)
    out = out + weights(j) * LSet{j} * (LSet{j}' * M);
  end
end
